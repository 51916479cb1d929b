// The broker process: a Majordomo-style ROUTER broker (BrokerKit) bound at --endpoint.
import BrokerKit
import Foundation
import Logging
import RPC
import ServiceKit

let executable = "broker"
let options: ServiceOptions
do {
    options = try ServiceOptions.parse(Array(CommandLine.arguments.dropFirst()),
                                       environment: ProcessInfo.processInfo.environment,
                                       defaultName: "broker", defaultEndpoint: ServiceOptions.defaultBroker)
} catch ServiceOptionsError.help {
    print(ServiceOptions.usage(executable: executable, defaultEndpoint: ServiceOptions.defaultBroker))
    exit(0)
} catch {
    FileHandle.standardError.write(Data("\(executable): \(error)\n".utf8))
    exit(2)
}

WinnowLogging.bootstrap()
let logger = Logger(label: "winnow.broker")
let shutdown = ShutdownSignal()
let configuration = BrokerConfiguration(
    heartbeatMicros: Int64(options.heartbeatMilliseconds) * 1000,
    instance: "\(ProcessInfo.processInfo.hostName):\(getpid())", version: winnowVersion)
let broker: Broker
do {
    if let directory = options.curveKeys {
        LinkSecurity.installed = try LinkSecurity(directory: directory, identity: "broker")
    }
    broker = try Broker(endpoint: options.endpoint, configuration: configuration, logger: logger)
} catch {
    logger.critical("cannot bind \(options.endpoint): \(error)")
    exit(1)
}
broker.start()
logger.info("broker serving at \(broker.endpoint)\(LinkSecurity.installed == nil ? "" : " (CURVE)"), heartbeat \(options.heartbeatMilliseconds) ms, pid \(getpid())")
shutdown.wait()
logger.info("shutting down")
broker.shutdown()
exit(0)
