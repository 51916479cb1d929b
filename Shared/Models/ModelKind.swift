// The model factory: which backbone a job or a command names, built with the protocol's
// configuration (or smaller, for smoke runs).

/// Which backbone to build.
public enum ModelKind: String, Sendable, CaseIterable, Codable {
    case sasrec, gru4rec

    /// The protocol's configuration of this backbone for `itemCount` items (items 1...N); `dim`
    /// (SASRec's width, GRU4Rec's embedding with a hidden state twice as wide) and `blocks`
    /// (SASRec's layers) override the protocol's 64 and 2 when given.
    public func make(itemCount: Int, maxLength: Int = 50, seed: UInt64, dim: Int? = nil, blocks: Int? = nil) -> Backbone {
        switch self {
        case .sasrec:
            var c = SASRecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            if let dim { c.dim = dim; c.inner = 4 * dim }
            if let blocks { c.blocks = blocks }
            return SASRec(c)
        case .gru4rec:
            var c = GRU4RecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            if let dim { c.embedding = dim; c.hidden = 2 * dim }
            return GRU4Rec(c)
        }
    }
}
