// Proto <-> domain: dense float tensors as packed little-endian bytes, and batches of
// right-padded item sequences as the wire's `ItemSequence`s (real items only, no padding).
import Foundation
import RPC
import WinnowProto

extension Winnow_V1_FloatTensor {
    /// A tensor of `shape` holding `values` (row-major).
    public init(shape: [Int], values: UnsafeBufferPointer<Float>) {
        self.init()
        self.shape = shape.map(Int64.init)
        // little-endian float32 is the host's layout on every platform Winnow builds for
        data = Data(buffer: values)
    }

    /// Copies the values into `out` (count floats), checking the byte count against the shape.
    public func copy(into out: UnsafeMutablePointer<Float>, count: Int, what: String) throws {
        let expected = shape.reduce(1) { $0 * Int($1) }
        guard expected == count, data.count == count * 4 else {
            throw RPCError(.internal, "\(what): a tensor of shape \(shape) with \(data.count) bytes, expected \(count) floats")
        }
        _ = data.withUnsafeBytes { raw in memcpy(out, raw.baseAddress!, count * 4) }
    }
}

/// A batch of sequences as the wire carries it.
public enum SequenceBatchForm {
    /// The sequences of a right-padded batch items (B, T) with lengths (B).
    public static func sequences(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int) -> [Winnow_V1_ItemSequence] {
        (0..<B).map { b in
            var s = Winnow_V1_ItemSequence()
            s.items = Array(UnsafeBufferPointer(start: items + b * T, count: Int(lengths[b])))
            return s
        }
    }

    /// The right-padded batch (items B×T, lengths B) of wire sequences, checked: every sequence
    /// holds 1...T items with ids in 1...itemCount. The error names the field and the index.
    public static func padded(_ sequences: [Winnow_V1_ItemSequence], T: Int, itemCount: Int,
                              field: String = "sequences") throws -> (items: [Int32], lengths: [Int32]) {
        guard !sequences.isEmpty else { throw RPCError(.invalidArgument, "\(field): empty") }
        var items = [Int32](repeating: 0, count: sequences.count * T), lengths = [Int32](repeating: 0, count: sequences.count)
        for (b, s) in sequences.enumerated() {
            guard !s.items.isEmpty else { throw RPCError(.invalidArgument, "\(field)[\(b)]: no items") }
            guard s.items.count <= T else {
                throw RPCError(.invalidArgument, "\(field)[\(b)]: \(s.items.count) items, the model reads at most \(T) (send the most recent \(T))")
            }
            for (t, i) in s.items.enumerated() {
                guard i >= 1 && Int(i) <= itemCount else {
                    throw RPCError(.invalidArgument, "\(field)[\(b)].items[\(t)]: item \(i) outside 1...\(itemCount)")
                }
                items[b * T + t] = i
            }
            lengths[b] = Int32(s.items.count)
        }
        return (items, lengths)
    }
}
