// A fit's checkpoint: everything the training loop needs to go on after a stop exactly
// as if it had not stopped — current and best weights, Adam's moments and step, the dropout,
// negative-sampling and shuffle generators, the batch order, the early-stopping counters and the
// epoch log. Runs of the protocol last hours on a small machine; a checkpoint written after every
// epoch turns a lost process into a lost epoch.
//
// File layout (little-endian), written to a temporary file and renamed over the old one, so a
// stop while writing leaves the previous checkpoint whole:
//   "WNWC" | u32 version | u32 section count | per section: u64 byte count, bytes
//   | CRC-32 (IEEE) of all preceding bytes, u32
// Sections: 0 the state as JSON, 1 current weights, 2 best weights, 3 Adam's moments (1–3 in
// the parameter file format, each with its own checksum). Version 2 adds the scheme, the
// selection metric's best value and the loss's own state.
import Foundation
import Numerics
import Data
import Models
import Evaluation

/// The small part of a checkpoint, kept as JSON.
struct CheckpointState: Codable {
    /// What must match for a run to continue from this checkpoint.
    var fingerprint: [String: String]
    /// Epochs completed.
    var epoch: Int
    /// Whether early stopping ended the run (then only the final evaluation is left).
    var stopped: Bool
    /// nil before any validation improved (JSON has no -infinity).
    var bestValue: Double?
    var bestEpoch: Int
    var bestValid: [String: Double]
    var epochsWithoutGain: Int
    /// Seconds spent up to the checkpoint, over every process that worked on the run.
    var seconds: Double
    var adamStep: Int
    /// Generator states in hex (JSON numbers cannot hold every UInt64 exactly).
    var modelRNG: [String]
    var lossState: [String]
    var shufflePosition: String
    var order: [Int32]
    var log: [EpochLog]
}

/// Why a checkpoint could not be read or does not belong to this run.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    case corrupt(path: String, reason: String)
    /// The checkpoint was written by a run with another configuration or dataset.
    case mismatch(path: String, field: String, stored: String, current: String)

    public var description: String {
        switch self {
        case .io(let p, let r): return "\(p): \(r)"
        case .corrupt(let p, let r): return "\(p): not a usable checkpoint: \(r)"
        case .mismatch(let p, let f, let s, let c):
            return "\(p): checkpoint belongs to another run: \(f) is \(s) there, \(c) here (delete the file to start over)"
        }
    }
}

/// The checkpoint framing (sections, version, CRC-32), for any state that is saved and restored.
public enum CheckpointFormat {
    static let magic: [UInt8] = Array("WNWC".utf8)
    static let version: UInt32 = 2

    public static func encode(_ sections: [[UInt8]]) -> [UInt8] {
        var out = magic
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        append(version)
        append(UInt32(sections.count))
        for s in sections { append(UInt64(s.count)); out += s }
        append(CRC32.checksum(out))
        return out
    }

    public static func decode(_ bytes: [UInt8], path: String) throws(CheckpointError) -> [[UInt8]] {
        func corrupt(_ why: String) -> CheckpointError { .corrupt(path: path, reason: why) }
        guard bytes.count >= 16, Array(bytes[0..<4]) == magic else { throw corrupt("not a Winnow checkpoint (bad magic)") }
        func int<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
        }
        let v = int(4, UInt32.self)
        guard v == version else { throw corrupt("format version \(v), this build reads \(version)") }
        let stored = int(bytes.count - 4, UInt32.self), computed = CRC32.checksum(bytes[0..<(bytes.count - 4)])
        guard stored == computed else {
            throw corrupt("checksum \(String(stored, radix: 16)) stored, \(String(computed, radix: 16)) computed")
        }
        let count = Int(int(8, UInt32.self))
        var at = 12, sections: [[UInt8]] = []
        for i in 0..<count {
            guard at + 8 <= bytes.count - 4 else { throw corrupt("section \(i) starts past the end") }
            let n = int(at, UInt64.self)
            at += 8
            guard n <= UInt64(bytes.count - 4 - at) else { throw corrupt("section \(i) runs past the end") }
            sections.append(Array(bytes[at..<(at + Int(n))]))
            at += Int(n)
        }
        guard at == bytes.count - 4 else { throw corrupt("\(bytes.count - 4 - at) bytes after the last section") }
        return sections
    }
}

/// One fit's checkpoint file: what identifies the fit, and saving and loading its state. The
/// loop's own fit keeps its batch order here and its loss's state in `state`; a trainer that owns
/// its epochs (DSS, ATJT) keeps its batch orders and weighers in `state` and has no `batcher`.
struct CheckpointFile {
    let path: String
    let model: Backbone
    let state: CheckpointedState
    /// What must match for a run to continue from this checkpoint. The epoch limit may differ
    /// (a stopped run can be given more epochs); the thread count may not, since results are
    /// reproducible only for a fixed one.
    let fingerprint: [String: String]

    init(path: String, loop: TrainingLoop, model: Backbone, instances: InstanceSet, state: CheckpointedState) {
        self.path = path; self.model = model; self.state = state
        let c = loop.config, d = loop.data
        fingerprint = ["model": model.name, "parameters": "\(model.parameters.count)", "seed": "\(c.seed)",
                       "patience": "\(c.patience)", "batch_size": "\(c.batchSize)", "max_length": "\(c.maxLength)",
                       "learning_rate": "\(c.learningRate)", "weight_decay": "\(c.weightDecay)",
                       "select_metric": c.selectMetric, "scheme": c.scheme.rawValue, "loss": state.fingerprint,
                       "threads": "\(Threads.count)", "users": "\(d.userCount)", "items": "\(d.itemCount)",
                       "interactions": "\(d.interactionCount)", "train_instances": "\(instances.count)"]
    }

    func save(_ loop: LoopState, seconds: Double, optimizer: Adam, batcher: Batcher?, best: ParameterSet) throws(CheckpointError) {
        let hex = { (words: [UInt64]) in words.map { String($0, radix: 16) } }
        let s = loop.stopping
        let words: [UInt64]
        do { words = try state.checkpointState() } catch { throw .io(path: path, reason: "cannot take the state of \(state.fingerprint): \(error)") }
        let state = CheckpointState(fingerprint: fingerprint, epoch: loop.epoch, stopped: loop.stopped,
                                    bestValue: s.bestValue.isFinite ? s.bestValue : nil, bestEpoch: s.bestEpoch, bestValid: loop.bestValid,
                                    epochsWithoutGain: s.epochsWithoutImprovement, seconds: seconds,
                                    adamStep: optimizer.step, modelRNG: hex(model.rng.state),
                                    lossState: hex(words),
                                    shufflePosition: String(batcher?.shufflePosition ?? 0, radix: 16),
                                    order: batcher?.order ?? [], log: loop.log)
        let json: Data
        do { json = try JSONEncoder().encode(state) } catch { throw .io(path: path, reason: "cannot encode state: \(error)") }
        let bytes = CheckpointFormat.encode([[UInt8](json), model.parameters.serialized(), best.serialized(),
                                             optimizer.momentsSerialized()])
        do { try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic) }
        catch { throw .io(path: path, reason: "cannot write checkpoint: \(error)") }
    }

    /// Loads the checkpoint into the model, optimiser, state, generators, `batcher` and `best`,
    /// and returns the loop state. Nothing is changed when the file is unusable or foreign.
    func load(into optimizer: Adam, batcher: inout Batcher?, best: ParameterSet) throws(CheckpointError) -> LoopState {
        guard let data = FileManager.default.contents(atPath: path) else { throw .io(path: path, reason: "cannot read checkpoint") }
        let sections = try CheckpointFormat.decode([UInt8](data), path: path)
        func corrupt(_ why: String) -> CheckpointError { .corrupt(path: path, reason: why) }
        guard sections.count == 4 else { throw corrupt("\(sections.count) sections, expected 4") }
        let state: CheckpointState
        do { state = try JSONDecoder().decode(CheckpointState.self, from: Data(sections[0])) }
        catch { throw corrupt("state: \(error)") }
        for key in fingerprint.keys.sorted() where state.fingerprint[key] != fingerprint[key] {
            throw .mismatch(path: path, field: key, stored: state.fingerprint[key] ?? "absent", current: fingerprint[key]!)
        }
        let words = { (hex: [String]) in hex.compactMap { UInt64($0, radix: 16) } }
        guard let modelRNG = RNG(state: words(state.modelRNG)), let shuffle = UInt64(state.shufflePosition, radix: 16),
              words(state.lossState).count == state.lossState.count else { throw corrupt("bad generator state") }
        // Check everything against scratch copies first, so a bad section changes nothing.
        let current = model.parameters.clone(), bestCopy = best.clone()
        do {
            try current.load(bytes: sections[1])
            try bestCopy.load(bytes: sections[2])
        } catch { throw corrupt("weights: \(error)") }
        var order = batcher
        if var o = order {
            guard o.restore(order: state.order, shufflePosition: shuffle) else { throw corrupt("batch order is not a permutation of the training rows") }
            order = o
        }
        let part = self.state
        let before: [UInt64]
        do {
            before = try part.checkpointState()
            guard try part.restore(checkpointState: words(state.lossState)) else { throw corrupt("the state does not fit \(part.fingerprint)") }
        } catch let e as CheckpointError { throw e } catch { throw corrupt("the state of \(part.fingerprint): \(error)") }
        // (restore checks the moments completely before it writes any)
        do { try optimizer.restore(moments: sections[3], step: state.adamStep) }
        catch { _ = try? part.restore(checkpointState: before); throw corrupt("optimiser: \(error)") }
        model.parameters.copyValues(from: current)
        best.copyValues(from: bestCopy)
        batcher = order
        model.rng = modelRNG
        // (the fingerprint matched: the stored metric and patience are this run's)
        var stopping = EarlyStopping(metric: fingerprint["select_metric"]!, patience: Int(fingerprint["patience"]!)!)
        stopping.restore(bestValue: state.bestValue ?? -.infinity, bestEpoch: state.bestEpoch, epochsWithoutImprovement: state.epochsWithoutGain)
        return LoopState(epoch: state.epoch, stopped: state.stopped, stopping: stopping, bestValid: state.bestValid,
                         secondsBefore: state.seconds, log: state.log)
    }
}

/// A part's checkpoint state as words (`CheckpointedState`): bytes eight to a word, and several
/// parts joined into one list, so a trainer made of parts stores each part's state in its own.
public enum CheckpointWords {
    /// The byte count, then the bytes eight to a word (little-endian within a word).
    public static func pack(_ bytes: [UInt8]) -> [UInt64] {
        var words: [UInt64] = [UInt64(bytes.count)]
        words.reserveCapacity(1 + (bytes.count + 7) / 8)
        var w: UInt64 = 0
        for (i, byte) in bytes.enumerated() {
            w |= UInt64(byte) << (8 * UInt64(i % 8))
            if i % 8 == 7 { words.append(w); w = 0 }
        }
        if bytes.count % 8 != 0 { words.append(w) }
        return words
    }

    /// What `pack` wrote; nil when the words do not hold exactly that.
    public static func unpack(_ words: [UInt64]) -> [UInt8]? {
        guard let first = words.first, first <= UInt64(Int.max / 2) else { return nil }
        let n = Int(first)
        guard words.count == 1 + (n + 7) / 8 else { return nil }
        var bytes = [UInt8](repeating: 0, count: n)
        for i in 0..<n { bytes[i] = UInt8(truncatingIfNeeded: words[1 + i / 8] >> (8 * UInt64(i % 8))) }
        return bytes
    }

    /// The part count, then each part's word count and words.
    public static func join(_ parts: [[UInt64]]) -> [UInt64] {
        var out: [UInt64] = [UInt64(parts.count)]
        for p in parts { out.append(UInt64(p.count)); out += p }
        return out
    }

    /// The parts `join` wrote; nil when the words do not hold exactly that.
    public static func split(_ words: [UInt64]) -> [[UInt64]]? {
        guard let count = words.first, count <= UInt64(words.count) else { return nil }
        var parts: [[UInt64]] = [], at = 1
        for _ in 0..<Int(count) {
            guard at < words.count, words[at] <= UInt64(words.count - at - 1) else { return nil }
            let n = Int(words[at]); at += 1
            parts.append(Array(words[at..<(at + n)])); at += n
        }
        return at == words.count ? parts : nil
    }
}

extension Batcher {
    /// The batch order and the shuffle generator's position, for a trainer's checkpoint state.
    public var checkpointWords: [UInt64] {
        [shufflePosition] + CheckpointWords.pack(order.withUnsafeBytes { Array($0) })
    }

    /// Puts back what `checkpointWords` held; false (changing nothing) when it does not fit.
    public mutating func restore(checkpointWords words: [UInt64]) -> Bool {
        guard let position = words.first, let bytes = CheckpointWords.unpack(Array(words.dropFirst())),
              bytes.count == order.count * 4 else { return false }
        var stored = [Int32](repeating: 0, count: order.count)
        stored.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
        return restore(order: stored, shufflePosition: position)
    }
}
