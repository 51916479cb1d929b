// All-position training's rows. A causal encoder's output at position p has seen items 0...p of
// its input and predicts item p + 1, so one forward over a window of items yields a prediction
// for every target in it. A window holds up to L consecutive training targets of one user with
// the L items before its last target as input: each target is predicted once per epoch, with up
// to L items of context, as the prefix scheme predicts it (the same context for every target of
// a sequence no longer than L + 1).
//
// Windows of a user's run of targets a...b (positions in the sequence) end at b, b − L, b − 2L, …
// while the end is >= a: the newest targets get full windows and only the oldest window of a
// run may be short. A window ending at e feeds s[lo..<e], lo = max(0, e − L), and position p
// predicts s[lo + p + 1] when lo + p + 1 >= its first target (the positions before it are
// context only: a protocol such as WSLRec's user split trains no target before minHistory).

/// Windows over an `InstanceSet`'s targets, 16 bytes each.
public struct WindowSet: Sendable {
    /// L: input items per window, at most.
    public let maxLength: Int
    /// (count) the user of each window.
    public let users: [Int32]
    /// (count) position in the user's sequence of the window's last target.
    public let lastTargets: [Int32]
    /// (count) position of its first target (the first that is a training instance).
    public let firstTargets: [Int32]
    /// (count) the index in the source `InstanceSet` of the first target's instance; the
    /// window's targets are the instances from there on, in order.
    public let firstInstances: [Int32]
    /// Targets over all windows (the source's instance count).
    public let targetCount: Int

    public var count: Int { users.count }

    /// Cuts `instances` into windows of at most `maxLength` targets. Runs are maximal stretches
    /// of consecutive instances of one user at consecutive positions (`LeaveOneOut` and
    /// `UserSplit` list each user's targets so); an instance outside any run is a window of one.
    public init(_ instances: InstanceSet, maxLength L: Int) {
        precondition(L >= 1, "maxLength must be >= 1")
        var u: [Int32] = [], last: [Int32] = [], first: [Int32] = [], inst: [Int32] = []
        let n = instances.count
        u.reserveCapacity(n / L + 1)
        var k = 0
        while k < n {
            let user = instances.users[k], a = instances.positions[k]
            var j = k + 1
            while j < n && instances.users[j] == user && instances.positions[j] == a + Int32(j - k) { j += 1 }
            // run: instances k..<j at positions a...b; windows from the newest end down
            let b = a + Int32(j - 1 - k)
            var end = b, pending: [(Int32, Int32)] = []
            while end >= a {
                let f = max(a, end - Int32(L) + 1)
                pending.append((end, f))
                end = f - 1
            }
            for (e, f) in pending.reversed() {
                u.append(user); last.append(e); first.append(f); inst.append(Int32(k) + (f - a))
            }
            k = j
        }
        maxLength = L; users = u; lastTargets = last; firstTargets = first; firstInstances = inst
        targetCount = n
    }
}
