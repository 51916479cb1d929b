import Foundation
import ServiceKit
import XCTest

final class ServiceCatalogueTests: XCTestCase {
    /// Every `rpc` in proto/winnow/v1/*.proto, read from the files: (proto service, method, request, response).
    func rpcsInProtoFiles() throws -> [(service: String, method: String, request: String, response: String)] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let directory = root.appendingPathComponent("proto/winnow/v1")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".proto") }
        XCTAssertFalse(files.isEmpty, "no .proto files under \(directory.path)")
        let servicePattern = try NSRegularExpression(pattern: #"service\s+(\w+)\s*\{([^}]*)\}"#)
        let rpcPattern = try NSRegularExpression(
            pattern: #"rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"#)
        var rpcs: [(String, String, String, String)] = []
        for file in files.sorted() {
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
                .components(separatedBy: "\n").map { $0.components(separatedBy: "//")[0] }.joined(separator: "\n")
            let whole = NSRange(text.startIndex..., in: text)
            for service in servicePattern.matches(in: text, range: whole) {
                let name = String(text[Range(service.range(at: 1), in: text)!])
                let body = String(text[Range(service.range(at: 2), in: text)!])
                for rpc in rpcPattern.matches(in: body, range: NSRange(body.startIndex..., in: body)) {
                    func group(_ index: Int) -> String { String(body[Range(rpc.range(at: index), in: body)!]) }
                    XCTAssertEqual(rpc.range(at: 2).location, NSNotFound, "\(name).\(group(1)) streams; the wire has no streams")
                    rpcs.append(("winnow.v1.\(name)", group(1), group(3), group(5)))
                }
            }
        }
        return rpcs
    }

    func testCatalogueCoversEveryRPCInTheProtoFiles() throws {
        let rpcs = try rpcsInProtoFiles()
        XCTAssertGreaterThan(rpcs.count, 30)
        for rpc in rpcs {
            guard let kind = ServiceCatalogue.kinds.first(where: { $0.protoService == rpc.service }) else {
                XCTFail("\(rpc.service) is missing from ServiceCatalogue")
                continue
            }
            guard let method = kind.method(rpc.method) else {
                XCTFail("\(rpc.service).\(rpc.method) is missing from ServiceCatalogue")
                continue
            }
            XCTAssertEqual(method.request.protoMessageName, "winnow.v1.\(rpc.request)", "\(rpc.service).\(rpc.method)")
            XCTAssertEqual(method.response.protoMessageName, "winnow.v1.\(rpc.response)", "\(rpc.service).\(rpc.method)")
        }
        let total = ServiceCatalogue.kinds.map(\.methods.count).reduce(0, +)
        XCTAssertEqual(total, rpcs.count, "the catalogue lists rpcs that the .proto files do not")
    }

    func testEveryServiceAnswersHealth() {
        for kind in ServiceCatalogue.kinds {
            XCTAssertNotNil(kind.method("Health"), "\(kind.name) has no Health")
        }
    }

    func testKindIsTheNameBeforeTheFirstSlash() {
        XCTAssertEqual(ServiceCatalogue.kind(of: "teacher/job42/m0")?.name, "teacher")
        XCTAssertEqual(ServiceCatalogue.kind(of: "noise/job42")?.protoService, "winnow.v1.NoiseRecogniser")
        XCTAssertNil(ServiceCatalogue.kind(of: "teachers"))
    }
}
