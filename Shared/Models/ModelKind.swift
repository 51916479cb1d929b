// The model factory: which backbone a job or a command names, built with the protocol's
// configuration.

/// Which backbone to build.
public enum ModelKind: String, Sendable, CaseIterable, Codable {
    case sasrec, gru4rec

    /// The protocol's configuration of this backbone for `itemCount` items (items 1...N).
    public func make(itemCount: Int, maxLength: Int = 50, seed: UInt64) -> Backbone {
        switch self {
        case .sasrec:
            var c = SASRecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            return SASRec(c)
        case .gru4rec:
            var c = GRU4RecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            return GRU4Rec(c)
        }
    }
}
