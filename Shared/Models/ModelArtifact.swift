// The model artifact: what the registry stores for a trained recommender and what a server
// loads — which backbone, its shape, and its weights. Bytes: a magic line, one JSON header line,
// then the weights as little-endian float32 in the parameter set's order.
import Foundation
import Numerics

/// A backbone's kind, shape and weights, to store and to rebuild.
public struct ModelArtifact: Sendable, Equatable {
    public struct Header: Codable, Sendable, Equatable {
        public var kind: ModelKind
        public var itemCount: Int
        public var maxLength: Int
        public var dim: Int?
        public var blocks: Int?
        /// Parameter names and sizes, to refuse weights of another architecture.
        public var parameters: [String]
        public var count: Int
        /// The dropout generator's state (hex words), when training continues from the artifact
        /// elsewhere and must draw what it would have drawn in the process that trained it.
        public var generator: [String]?
        enum CodingKeys: String, CodingKey {
            case kind, dim, blocks, parameters, count, generator, itemCount = "item_count", maxLength = "max_length"
        }
    }
    public var header: Header
    public var weights: [Float]

    static let magic = Array("winnow-model 1\n".utf8)

    /// The artifact of `model`, built by `kind.make(itemCount:maxLength:seed:dim:blocks:)`.
    /// `generator`: keep the model's dropout generator too (a model that training goes on from).
    public init(kind: ModelKind, model: Backbone, dim: Int? = nil, blocks: Int? = nil, generator: Bool = false) {
        let p = model.parameters
        header = Header(kind: kind, itemCount: model.itemCount, maxLength: model.maxLength, dim: dim, blocks: blocks,
                        parameters: p.entries.map { "\($0.name):\($0.count)" }, count: p.count,
                        generator: generator ? model.rng.state.map { String($0, radix: 16) } : nil)
        weights = Array(UnsafeBufferPointer(start: p.values, count: p.count))
    }

    public func encoded() throws -> [UInt8] {
        var out = Self.magic
        out += Array(try JSONEncoder().encode(header)) + [0x0A]
        out.reserveCapacity(out.count + 4 * weights.count)
        for w in weights { withUnsafeBytes(of: w.bitPattern.littleEndian) { out += $0 } }
        return out
    }

    /// Reads bytes that `encoded()` wrote; throws naming what is wrong.
    public init(decoding bytes: [UInt8]) throws {
        func bad(_ why: String) -> ModelArtifactError { .malformed(why) }
        guard bytes.starts(with: Self.magic) else { throw bad("not a Winnow model artifact (magic line missing)") }
        guard let nl = bytes[Self.magic.count...].firstIndex(of: 0x0A) else { throw bad("header line not terminated") }
        do { header = try JSONDecoder().decode(Header.self, from: Foundation.Data(bytes[Self.magic.count..<nl])) }
        catch { throw bad("header: \(error)") }
        let body = bytes[(nl + 1)...]
        guard header.count >= 0, body.count == 4 * header.count else {
            throw bad("\(body.count) weight bytes for \(header.count) parameters")
        }
        var w = [Float](repeating: 0, count: header.count)
        var i = body.startIndex
        for k in 0..<header.count {
            let b = UInt32(body[i]) | UInt32(body[i + 1]) << 8 | UInt32(body[i + 2]) << 16 | UInt32(body[i + 3]) << 24
            w[k] = Float(bitPattern: b); i += 4
        }
        weights = w
    }

    /// The backbone with these weights (inference: dropout is off in `forward(training: false)`).
    public func backbone() throws -> Backbone {
        let h = header
        guard h.itemCount >= 1, h.maxLength >= 1, (h.dim ?? 1) >= 1, (h.blocks ?? 1) >= 1 else {
            throw ModelArtifactError.malformed("shape out of range: \(h.itemCount) items, max_length \(h.maxLength)")
        }
        let model = h.kind.make(itemCount: h.itemCount, maxLength: h.maxLength, seed: 0, dim: h.dim, blocks: h.blocks)
        let p = model.parameters
        guard p.entries.map({ "\($0.name):\($0.count)" }) == h.parameters, p.count == weights.count else {
            throw ModelArtifactError.malformed("weights are of another architecture than \(h.kind.rawValue) with this shape")
        }
        weights.withUnsafeBufferPointer { p.values.update(from: $0.baseAddress!, count: weights.count) }
        if let words = h.generator {
            guard let rng = RNG(state: words.compactMap { UInt64($0, radix: 16) }) else {
                throw ModelArtifactError.malformed("generator: not a generator state")
            }
            model.rng = rng
        }
        return model
    }
}

public enum ModelArtifactError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    public var description: String {
        switch self { case .malformed(let s): return "model artifact: \(s)" }
    }
}
