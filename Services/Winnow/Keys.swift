import ArgumentParser
import Foundation
import RPC
import Stack

/// `winnow keys`: writes a CURVE key directory (`LinkSecurity`) for services started by hand,
/// in containers or in a cluster: a key pair per name (0600) and the allow-list of them all.
/// Names already there keep their keys, so running it again with a new name adds a peer.
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make CURVE key pairs and the allow-list that --curve-keys reads.",
        discussion: """
            Each service reads <dir>/<its kind>.key and <dir>/allowed-keys; command-line clients \
            read client.key. In a cluster, give each service its own .key file (a Secret) and \
            everyone the allow-list (docs/STACK.md, "Authenticated links").
            """)

    @Option(help: "Key directory to write (made 0700).")
    var dir: String

    @Option(help: "Comma-separated key names (default: every service of the stack and \"client\").")
    var names: String?

    func run() throws {
        let list = names.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
            ?? StackConfiguration.curveIdentities
        let members = try LinkSecurity.create(directory: dir, names: list)
        for (name, key) in members.sorted(by: { $0.key < $1.key }) { print("\(name) \(key)") }
        print("key directory: \(dir) (\(members.count) key pairs; allow-list \(dir)/\(LinkSecurity.allowedKeysFile))")
    }
}
