// Seeded synthetic interaction data: Zipf item popularity, latent user intentions, injected noise
// with its ground truth. Used for scale tests and robustness experiments; see docs/DATA.md.
//
// The world (built once from the seed):
//   - item popularity: a seeded permutation gives every item a rank r in 1...I; its weight is
//     r^(-zipfExponent).
//   - topics: a second seeded permutation deals the items round-robin into `topics` clusters
//     (every topic gets ⌊I/T⌋ or ⌈I/T⌉ items); a topic's mass is the sum of its items' weights.
//   - sequence lengths: every user gets min(minLength, interactions / users) items plus a share
//     of the rest proportional to an Exp(1) draw (cumulative rounding, so they sum exactly to
//     `interactions`).
// Each user (with its own random stream derived from the seed and the user index):
//   - mixes 1...intentionsPerUser distinct topics drawn by topic mass (latent intentions);
//   - starts in one of them; before each later interaction switches to another of its
//     intentions with probability driftRate;
//   - draws each item from the current topic by item weight — or, with probability noiseRate,
//     uniformly from all items, flagged as noise (the flag says "injected", even when the
//     random item happens to fit the user);
//   - gets timestamps strictly increasing: a start uniform in 180 days after startTimestamp,
//     then gaps of 1 + ⌊Exp(mean 3600)⌋ seconds.
// Same spec (seed included) and the same build -> the same data, byte for byte on disk.
import Foundation

/// What to generate. User tokens are 1...users and item tokens 1...items in the files.
public struct SyntheticSpec: Sendable, Equatable, Codable {
    public var users: Int
    public var items: Int
    /// Total interactions over all users (>= users: every user has at least one).
    public var interactions: Int
    /// Probability that an interaction is replaced by a uniformly random item (0...1).
    public var noiseRate: Double
    public var seed: UInt64
    /// Zipf exponent s of item popularity: weight(rank r) = r^(-s); 0 is uniform.
    public var zipfExponent: Double
    /// Number of latent topics the items are dealt into.
    public var topics: Int
    /// The most topics (intentions) a user mixes; each user draws 1...intentionsPerUser.
    public var intentionsPerUser: Int
    /// Probability, before each interaction after the first, of switching intention.
    public var driftRate: Double
    /// Every user gets at least min(minLength, interactions / users) interactions.
    public var minLength: Int
    /// Seconds since the epoch at which the first sequences start.
    public var startTimestamp: Int64

    public init(users: Int, items: Int, interactions: Int, noiseRate: Double, seed: UInt64,
                zipfExponent: Double = 1.0, topics: Int = 100, intentionsPerUser: Int = 3,
                driftRate: Double = 0.1, minLength: Int = 5, startTimestamp: Int64 = 1_600_000_000) {
        self.users = users
        self.items = items
        self.interactions = interactions
        self.noiseRate = noiseRate
        self.seed = seed
        self.zipfExponent = zipfExponent
        self.topics = topics
        self.intentionsPerUser = intentionsPerUser
        self.driftRate = driftRate
        self.minLength = minLength
        self.startTimestamp = startTimestamp
    }

    /// Throws `SyntheticError.invalid` naming the first bad field.
    public func validate() throws {
        func bad(_ field: String, _ value: Any, _ reason: String) -> SyntheticError {
            .invalid(field: field, value: "\(value)", reason: reason)
        }
        guard users >= 1 else { throw bad("users", users, "must be >= 1") }
        guard users <= Int(Int32.max) else { throw bad("users", users, "must fit in Int32") }
        guard items >= 1 else { throw bad("items", items, "must be >= 1") }
        guard items <= Int(Int32.max) else { throw bad("items", items, "must fit in Int32") }
        guard interactions >= users else { throw bad("interactions", interactions, "must be >= users (\(users))") }
        guard noiseRate >= 0 && noiseRate <= 1 else { throw bad("noiseRate", noiseRate, "must be in 0...1") }
        guard zipfExponent >= 0 && zipfExponent.isFinite else { throw bad("zipfExponent", zipfExponent, "must be finite and >= 0") }
        guard topics >= 1 && topics <= items else { throw bad("topics", topics, "must be in 1...items (\(items))") }
        guard intentionsPerUser >= 1 && intentionsPerUser <= topics else {
            throw bad("intentionsPerUser", intentionsPerUser, "must be in 1...topics (\(topics))")
        }
        guard driftRate >= 0 && driftRate <= 1 else { throw bad("driftRate", driftRate, "must be in 0...1") }
        guard minLength >= 1 else { throw bad("minLength", minLength, "must be >= 1") }
        guard startTimestamp >= 0 && startTimestamp < 1 << 40 else {
            throw bad("startTimestamp", startTimestamp, "must be in 0..<2^40")
        }
    }
}

/// Bad synthetic spec or output trouble.
public enum SyntheticError: Error, Equatable, CustomStringConvertible {
    /// A spec field out of range.
    case invalid(field: String, value: String, reason: String)
    /// An output file could not be created or written.
    case write(path: String, reason: String)

    public var description: String {
        switch self {
        case let .invalid(field, value, reason): return "synthetic spec: \(field) = \(value) \(reason)"
        case let .write(path, reason): return "synthetic: cannot write \(path): \(reason)"
        }
    }
}

/// Generated interactions in memory, user by user in time order.
public struct SyntheticData: Sendable, Equatable {
    public let spec: SyntheticSpec
    /// User u (0-based; token u + 1) is `userOffsets[u] ..< userOffsets[u + 1]`.   (U + 1)
    public let userOffsets: [Int]
    public let items: [Int32]        // (interactions) item ids 1...I
    public let timestamps: [Int64]   // (interactions) strictly increasing within a user
    public let isNoise: [Bool]       // (interactions) injected uniformly random item
    /// The latent topic (0..<topics) of every item id; entry 0 (padding) is -1.   (I + 1)
    public let itemTopic: [Int32]

    /// User u's item sequence.
    public func sequence(ofUser u: Int) -> ArraySlice<Int32> { items[userOffsets[u] ..< userOffsets[u + 1]] }
}

/// Counts of what was generated.
public struct SyntheticSummary: Sendable, Equatable {
    public var users: Int
    public var interactions: Int
    public var noisy: Int
    public var interBytes: Int
    public var noiseBytes: Int
}

public enum Synthetic {
    /// Generates the whole data set in memory.
    public static func generate(_ spec: SyntheticSpec) throws -> SyntheticData {
        try spec.validate()
        let world = World(spec)
        var items = [Int32](), timestamps = [Int64](), isNoise = [Bool]()
        items.reserveCapacity(spec.interactions)
        timestamps.reserveCapacity(spec.interactions)
        isNoise.reserveCapacity(spec.interactions)
        var offsets = [0]
        offsets.reserveCapacity(spec.users + 1)
        var user = UserBuffer()
        for u in 0 ..< spec.users {
            world.generate(user: u, into: &user)
            items.append(contentsOf: user.items)
            timestamps.append(contentsOf: user.timestamps)
            isNoise.append(contentsOf: user.isNoise)
            offsets.append(items.count)
        }
        return SyntheticData(spec: spec, userOffsets: offsets, items: items, timestamps: timestamps,
                             isNoise: isNoise, itemTopic: world.itemTopic)
    }

    /// The noise file beside an .inter file: `x.inter` -> `x.noise`, anything else gets `.noise` appended.
    public static func noisePath(forInter path: String) -> String {
        path.hasSuffix(".inter") ? String(path.dropLast(".inter".count)) + ".noise" : path + ".noise"
    }

    /// Header of the .inter file (RecBole atomic file).
    public static let interHeader = "user_id:token\titem_id:token\ttimestamp:float"
    /// Header of the .noise file: one row per interaction, in the same order as the .inter file.
    public static let noiseHeader = "user_id:token\tposition:float\titem_id:token\ttimestamp:float\tis_noise:float"

    /// Streams the data set to a RecBole atomic `.inter` file and the ground-truth `.noise`
    /// file beside it (formats in docs/DATA.md), through buffered writers; files are replaced.
    public static func write(_ spec: SyntheticSpec, interPath: String, noisePath: String) throws -> SyntheticSummary {
        try spec.validate()
        let world = World(spec)
        let inter = try ByteWriter(path: interPath)
        let noise = try ByteWriter(path: noisePath)
        defer { inter.close(); noise.close() }
        try inter.append(interHeader); inter.append(byte: 0x0A)
        try noise.append(noiseHeader); noise.append(byte: 0x0A)
        var user = UserBuffer()
        var noisy = 0
        for u in 0 ..< spec.users {
            world.generate(user: u, into: &user)
            let token = Int64(u + 1)
            for p in 0 ..< user.items.count {
                let item = Int64(user.items[p]), t = user.timestamps[p]
                inter.append(token); inter.append(byte: 0x09)
                inter.append(item); inter.append(byte: 0x09)
                inter.append(t); inter.append(byte: 0x0A)
                noise.append(token); noise.append(byte: 0x09)
                noise.append(Int64(p)); noise.append(byte: 0x09)
                noise.append(item); noise.append(byte: 0x09)
                noise.append(t); noise.append(byte: 0x09)
                noise.append(byte: user.isNoise[p] ? 0x31 : 0x30); noise.append(byte: 0x0A)
                if user.isNoise[p] { noisy += 1 }
                try inter.flushIfFull()   // a line is far below the buffer's 4 KiB slack
                try noise.flushIfFull()
            }
        }
        try inter.flush()
        try noise.flush()
        return SyntheticSummary(users: spec.users, interactions: spec.interactions, noisy: noisy,
                                interBytes: inter.written, noiseBytes: noise.written)
    }
}

// MARK: - Random numbers (own algorithms, so output never depends on the standard library's)

/// xoshiro256** seeded through SplitMix64.
struct SyntheticRNG {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    init(seed: UInt64, stream: UInt64) {
        var x = seed ^ (stream &* 0xD1B5_4A32_D192_ED03)
        func splitmix(_ x: inout UInt64) -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(&x); s1 = splitmix(&x); s2 = splitmix(&x); s3 = splitmix(&x)
    }

    @inline(__always)
    mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    @inline(__always)
    mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// Uniform in 0..<n (multiply-shift; bias below 2^-40 for n < 2^24).
    @inline(__always)
    mutating func below(_ n: Int) -> Int { Int(next().multipliedFullWidth(by: UInt64(n)).high) }

    /// Exp(1).
    @inline(__always)
    mutating func exponential() -> Double { -log(1 - uniform()) }
}

/// Index of the first entry of the ascending `cumulative` above `x` (clamped to the last).
@inline(__always)
private func firstAbove(_ x: Double, _ cumulative: UnsafeBufferPointer<Double>, _ lo: Int, _ hi: Int) -> Int {
    var lo = lo, hi = hi - 1
    while lo < hi {
        let mid = (lo + hi) >> 1
        if cumulative[mid] > x { hi = mid } else { lo = mid + 1 }
    }
    return lo
}

// MARK: - The world and the users

struct UserBuffer {
    var items: [Int32] = []
    var timestamps: [Int64] = []
    var isNoise: [Bool] = []
    var intentions: [Int] = []
}

/// The seeded tables every user draws from.
final class World {
    let spec: SyntheticSpec
    let itemTopic: [Int32]           // (I + 1) topic of each item id, -1 for padding
    let topicOffsets: [Int]          // (T + 1) topic t's items are topicItems[topicOffsets[t] ..< topicOffsets[t + 1]]
    let topicItems: [Int32]          // (I)
    let topicItemCum: [Double]       // (I) cumulative item weight within each topic
    let topicCum: [Double]           // (T) cumulative topic mass
    let lengths: [Int]               // (U)

    static let startSpanSeconds = 180 * 86_400
    static let meanGapSeconds = 3600.0

    init(_ spec: SyntheticSpec) {
        self.spec = spec
        let I = spec.items, T = spec.topics, U = spec.users
        var rng = SyntheticRNG(seed: spec.seed, stream: 0)
        func permutation(_ n: Int) -> [Int32] {
            var p = (0 ..< n).map { Int32($0 + 1) }
            for i in stride(from: n - 1, to: 0, by: -1) { p.swapAt(i, rng.below(i + 1)) }
            return p
        }
        // rank[item] and weight = rank^-s.
        let byRank = permutation(I)   // byRank[r - 1] = item of rank r
        var weight = [Double](repeating: 0, count: I + 1)
        for r in 0 ..< I { weight[Int(byRank[r])] = pow(Double(r + 1), -spec.zipfExponent) }
        // Deal items into topics round-robin over a second permutation.
        let dealt = permutation(I)
        var itemTopic = [Int32](repeating: -1, count: I + 1)
        for (j, item) in dealt.enumerated() { itemTopic[Int(item)] = Int32(j % T) }
        var topicOffsets = [Int](repeating: 0, count: T + 1)
        for t in 0 ..< T { topicOffsets[t + 1] = topicOffsets[t] + (I / T + (t < I % T ? 1 : 0)) }
        var fill = topicOffsets
        var topicItems = [Int32](repeating: 0, count: I)
        for item in 1 ... I {   // ascending ids within a topic
            let t = Int(itemTopic[item])
            topicItems[fill[t]] = Int32(item)
            fill[t] += 1
        }
        var topicItemCum = [Double](repeating: 0, count: I)
        var topicCum = [Double](repeating: 0, count: T)
        var running = 0.0
        for t in 0 ..< T {
            var acc = 0.0
            for j in topicOffsets[t] ..< topicOffsets[t + 1] {
                acc += weight[Int(topicItems[j])]
                topicItemCum[j] = acc
            }
            running += acc
            topicCum[t] = running
        }
        // Lengths: base plus an Exp(1)-proportional share of the rest, summing exactly.
        let base = min(spec.minLength, spec.interactions / U)
        let extra = spec.interactions - base * U
        var draws = [Double](repeating: 0, count: U)
        var total = 0.0
        for u in 0 ..< U { draws[u] = rng.exponential(); total += draws[u] }
        if total == 0 { draws = [Double](repeating: 1, count: U); total = Double(U) }
        var lengths = [Int](repeating: base, count: U)
        var prefix = 0.0, given = 0
        for u in 0 ..< U {   // cumulative rounding: monotone, and the last user closes the sum
            prefix += draws[u]
            let cum = u == U - 1 ? extra : min(extra, Int((Double(extra) * prefix / total).rounded(.down)))
            lengths[u] += cum - given
            given = cum
        }
        self.itemTopic = itemTopic
        self.topicOffsets = topicOffsets
        self.topicItems = topicItems
        self.topicItemCum = topicItemCum
        self.topicCum = topicCum
        self.lengths = lengths
    }

    /// Fills `out` with user `u`'s interactions.
    func generate(user u: Int, into out: inout UserBuffer) {
        var rng = SyntheticRNG(seed: spec.seed, stream: UInt64(u) + 1)
        let n = lengths[u]
        out.items.removeAll(keepingCapacity: true)
        out.timestamps.removeAll(keepingCapacity: true)
        out.isNoise.removeAll(keepingCapacity: true)
        out.intentions.removeAll(keepingCapacity: true)
        topicCum.withUnsafeBufferPointer { tc in
        topicItemCum.withUnsafeBufferPointer { ic in
            let T = spec.topics
            let wanted = 1 + rng.below(spec.intentionsPerUser)
            var tries = 0
            while out.intentions.count < wanted && tries < 8 * wanted {
                let t = firstAbove(rng.uniform() * tc[T - 1], tc, 0, T)
                if !out.intentions.contains(t) { out.intentions.append(t) }
                tries += 1
            }
            var current = rng.below(out.intentions.count)
            var time = spec.startTimestamp + Int64(rng.below(World.startSpanSeconds))
            for p in 0 ..< n {
                if p > 0 {
                    time += 1 + Int64(World.meanGapSeconds * rng.exponential())
                    if out.intentions.count > 1 && rng.uniform() < spec.driftRate {
                        current = (current + 1 + rng.below(out.intentions.count - 1)) % out.intentions.count
                    }
                }
                if rng.uniform() < spec.noiseRate {
                    out.items.append(Int32(1 + rng.below(spec.items)))
                    out.isNoise.append(true)
                } else {
                    let t = out.intentions[current]
                    let lo = topicOffsets[t], hi = topicOffsets[t + 1]
                    let j = firstAbove(rng.uniform() * ic[hi - 1], ic, lo, hi)   // cumulative restarts per topic
                    out.items.append(topicItems[j])
                    out.isNoise.append(false)
                }
                out.timestamps.append(time)
            }
        }}
    }
}

// MARK: - Buffered output

/// Appends bytes and decimal integers into a 1 MiB buffer, written out when full.
final class ByteWriter {
    private let handle: FileHandle
    private let path: String
    private let capacity = 1 << 20
    private let buffer: UnsafeMutablePointer<UInt8>
    private var used = 0
    private(set) var written = 0

    init(path: String) throws {
        self.path = path
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw SyntheticError.write(path: path, reason: "cannot create the file")
        }
        self.handle = handle
        buffer = .allocate(capacity: capacity + 4096)
    }

    deinit { buffer.deallocate() }

    func close() { try? handle.close() }

    @inline(__always)
    func append(byte: UInt8) { buffer[used] = byte; used += 1 }

    func append(_ text: String) throws {
        for b in text.utf8 { try flushIfFull(); append(byte: b) }
    }

    /// Non-negative decimal.
    @inline(__always)
    func append(_ value: Int64) {
        var v = UInt64(value)
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat { d[n] = 0x30 + UInt8(v % 10); v /= 10; n += 1 } while v > 0
            for i in 0 ..< n { buffer[used + i] = d[n - 1 - i] }
        }
        used += n
    }

    func flushIfFull() throws { if used >= capacity { try flush() } }

    func flush() throws {
        guard used > 0 else { return }
        do {
            try handle.write(contentsOf: UnsafeBufferPointer(start: buffer, count: used))
        } catch {
            throw SyntheticError.write(path: path, reason: "\(error)")
        }
        written += used
        used = 0
    }
}
