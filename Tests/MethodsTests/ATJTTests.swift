import XCTest
import Numerics
import Models
import Data
import Training
@testable import Methods

/// A small synthetic world with known noise, as a `SequenceDataset` and its leave-one-out split;
/// `noisy[offset]` flags each interaction.
struct AuxWorld {
    let data: SequenceDataset
    let split: LeaveOneOut
    let noisy: [Bool]

    init(users: Int, items: Int, perUser: Int, noise: Double, topics: Int = 10, seed: UInt64 = 5) {
        let spec = SyntheticSpec(users: users, items: items, interactions: users * perUser, noiseRate: noise, seed: seed,
                                 zipfExponent: 0.5, topics: topics, intentionsPerUser: 2, driftRate: 0.1, minLength: perUser)
        let s = try! Synthetic.generate(spec)
        data = SequenceDataset(sequences: (0..<users).map { Array(s.sequence(ofUser: $0)) }, itemCount: items)
        split = LeaveOneOut(data)
        noisy = s.isNoise
    }
}

/// Batches of one instance set with their global instance ids (right-padded).
final class AuxBatches {
    let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>
    let ids: UnsafeMutablePointer<Int32>
    let B: Int, T: Int
    init(B: Int, T: Int) {
        self.B = B; self.T = T
        items = .allocate(capacity: B * T); lengths = .allocate(capacity: B); targets = .allocate(capacity: B); ids = .allocate(capacity: B)
    }
    deinit { items.deallocate(); lengths.deallocate(); targets.deallocate(); ids.deallocate() }
    func fill(_ data: SequenceDataset, _ inst: InstanceSet, _ globalIds: ArraySlice<Int32>) -> SequenceBatch {
        let n = globalIds.count
        for (b, k) in globalIds.enumerated() { ids[b] = k }
        fillInstanceRows(data: data, instances: inst, ids: ids, n: n, maxLength: T, items: items, lengths: lengths, targets: targets)
        return SequenceBatch(items: items, lengths: lengths, targets: targets, instances: ids, B: n, T: T)
    }
}

func tinySASRec(items: Int, T: Int, seed: UInt64) -> SASRec {
    var c = SASRecConfig(itemCount: items)
    c.maxLength = T; c.dim = 8; c.blocks = 1; c.heads = 2; c.inner = 16; c.seed = seed
    return SASRec(c)
}

func tinyGRU4Rec(items: Int, T: Int, seed: UInt64) -> GRU4Rec {
    var c = GRU4RecConfig(itemCount: items)
    c.maxLength = T; c.embedding = 8; c.hidden = 12; c.seed = seed
    return GRU4Rec(c)
}

final class ATJTTests: XCTestCase {
    func testUnitWeightsWithZeroAlphaReduceExactlyToBaseTraining() throws {
        let world = AuxWorld(users: 30, items: 40, perUser: 12, noise: 0.1)
        let inst = world.split.train, T = 8, B = 16
        for kind in ["SASRec", "GRU4Rec"] {
            let base: Backbone = kind == "SASRec" ? tinySASRec(items: 40, T: T, seed: 3) : tinyGRU4Rec(items: 40, T: T, seed: 3)
            let other: Backbone = kind == "SASRec" ? tinySASRec(items: 40, T: T, seed: 3) : tinyGRU4Rec(items: 40, T: T, seed: 3)
            let step = try TrainStep(model: base, loss: CrossEntropyLoss(), optimizer: Adam(parameters: base.parameters),
                                     scheme: .prefixes, batchSize: B)
            let weigher = ConstantWeigher(value: 1)
            let atjt = ATJTTrainer(model: other, weighers: [weigher], maxBatch: B)
            let buf = AuxBatches(B: B, T: T)
            for s in 0..<6 {
                let ids = (0..<Int32(B)).map { Int32((Int($0) * 7 + s * 13) % inst.count) }
                let batch = buf.fill(world.data, inst, ids[...])
                let lb = try step.step(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: nil, B: batch.B)
                let la = try atjt.step(batch, group: 0)
                XCTAssertEqual(Float(lb), Float(la), accuracy: 1e-6, "\(kind) step \(s) loss")
            }
            XCTAssertEqual(weigher.feedbackCalls, 6)
            let a = base.parameters, b = other.parameters
            XCTAssertEqual(a.count, b.count)
            XCTAssertEqual(memcmp(a.values, b.values, a.count * 4), 0, "\(kind): parameters differ bitwise from base training")
        }
    }

    func testWeightGradientIsTheDerivativeOfTheNormalisedWeightedLoss() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0)
        let B = 6, T = 6
        let w: [Float] = [0.9, 0.2, 0.5, 0.7, 0.05, 0.6]
        let weigher = FixedWeigher(w)
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: T, seed: 2), weighers: [weigher], maxBatch: B)
        let buf = AuxBatches(B: B, T: T)
        let loss = try trainer.step(buf.fill(world.data, world.split.train, Array(0..<Int32(B))[...]), group: 0)
        let l = (0..<B).map { Double(trainer.losses[$0]) }
        assertNormalisedWeightGradient(loss: loss, dW: weigher.dW, weights: w, rowLosses: l,
                                       lossAccuracy: 1e-5, gradientAccuracy: 1e-4)
    }

    func testRecogniserNeverWeighsItsOwnTrainingGroup() throws {
        let world = AuxWorld(users: 40, items: 40, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 8, B = 16
        for N in [2, 3] {
            var config = ATJTConfig(itemCount: 40, maxLength: T)
            config.groups = N; config.audit = true; config.recogniserBatch = 16
            config.recogniser.dim = 4; config.recogniser.outputHidden = [8]
            let weigher = ATJTWeigher(config: config, data: world.data, instances: inst)
            let trainer = ATJTTrainer(model: tinySASRec(items: 40, T: T, seed: 1), weighers: weigher.weighers, maxBatch: B)
            let buf = AuxBatches(B: B, T: T)
            for g in 0..<N {
                let members = weigher.partition.members[g]
                XCTAssertFalse(members.isEmpty)
                var start = 0
                while start < members.count {
                    let end = min(start + B, members.count)
                    try trainer.step(buf.fill(world.data, inst, members[start..<end]), group: g)
                    start = end
                }
            }
            for g in 0..<N {
                let own = Set(weigher.partition.members[g])
                XCTAssertEqual(weigher.weighed[g], own, "N \(N): recogniser \(g) weighs exactly its group")
                XCTAssertFalse(weigher.trainedOn[g].isEmpty)
                XCTAssertTrue(weigher.trainedOn[g].isDisjoint(with: own), "N \(N): recogniser \(g) trained on its own group")
                XCTAssertTrue(weigher.trainedOn[g].isDisjoint(with: weigher.weighed[g]))
            }
            // a batch of another width, or naming an instance that does not exist, is refused
            let wrongWidth = AuxBatches(B: 2, T: T + 1).fill(world.data, inst, weigher.partition.members[0].prefix(2))
            let w2 = AuxFloats(2)
            XCTAssertThrowsError(try weigher.weighers[0].weigh(wrongWidth, id: 0, weights: w2.p)) {
                XCTAssertTrue("\($0)".contains("\(T + 1) positions per row, the recogniser reads \(T)"), "\($0)")
            }
            let ghost = buf.fill(world.data, inst, weigher.partition.members[0].prefix(1))
            ghost.instances.withMemoryRebound(to: Int32.self, capacity: 1) { UnsafeMutablePointer(mutating: $0)[0] = Int32(inst.count) }
            XCTAssertThrowsError(try weigher.weighers[0].weigh(ghost, id: 0, weights: w2.p)) {
                XCTAssertTrue("\($0)".contains("names instance \(inst.count)"), "\($0)")
            }
            // a batch that mixes in another group's instance is refused
            let mixed = [weigher.partition.members[0][0], weigher.partition.members[1][0]]
            let w = AuxFloats(2)
            XCTAssertThrowsError(try weigher.weighers[0].weigh(buf.fill(world.data, inst, mixed[...]), id: 0, weights: w.p)) { e in
                XCTAssertEqual(e as? SequenceWeigherError,
                               .wrongGroup(instance: Int(mixed[1]), said: 0, actual: 1))
            }
        }
    }

    /// Algorithm 1 initialises g(·; Θ_D) for every round (line 4): when a group comes back as the
    /// recommender's data after a full pass over every group, its recogniser weighs the round's
    /// first batch with its initial weights again, not with what it learnt in the last round.
    func testRecogniserIsReinitialisedWhenItsGroupStartsANewRound() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 6, B = 16
        var config = ATJTConfig(itemCount: 30, maxLength: T)
        config.recogniserBatch = 16; config.recogniser.dim = 4; config.recogniser.outputHidden = [8]
        let weigher = ATJTWeigher(config: config, data: world.data, instances: inst)
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: T, seed: 1), weighers: weigher.weighers, maxBatch: B)
        let initial = weigher.recognisers.map { $0.parameters.clone() }
        func isInitial(_ g: Int) -> Bool {
            memcmp(weigher.recognisers[g].parameters.values, initial[g].values, initial[g].count * 4) == 0
        }
        let buf = AuxBatches(B: B, T: T)
        for round in 0..<3 {
            for g in 0..<2 {
                let members = weigher.partition.members[g]
                var start = 0
                while start < members.count {
                    let end = min(start + B, members.count), n = end - start
                    let batch = buf.fill(world.data, inst, members[start..<end])
                    if start == 0 {
                        let w = AuxFloats(n), dW = AuxFloats(n)
                        try weigher.weighers[g].weigh(batch, id: 0, weights: w.p)
                        XCTAssertTrue(isInitial(g), "round \(round), group \(g): weighed by a re-initialised recogniser")
                        try weigher.weighers[g].feedback(dWeights: dW.p, B: n, id: 0)
                    } else {
                        try trainer.step(batch, group: g)
                    }
                    start = end
                }
                XCTAssertFalse(isInitial(g), "round \(round), group \(g): trained during the round")
            }
        }
        XCTAssertEqual(weigher.rounds, [3, 3])
    }

    /// A group's recogniser continued from a snapshot in another object (another process) takes
    /// the same steps to the bit as the one it was taken from: weights, Adagrad, round, pool order
    /// and both generators travel; a snapshot of another group is refused.
    func testAGroupRecogniserContinuedFromItsSnapshotStepsAsTheOriginal() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 6, B = 8
        var config = ATJTConfig(itemCount: 30, maxLength: T)
        config.recogniserBatch = 16; config.recogniser.dim = 4; config.recogniser.outputHidden = [8]
        let partition = GroupPartition(users: world.data.userCount, instances: inst, groups: 2, seed: config.seed)
        func make(_ g: Int) -> GroupRecogniser {
            GroupRecogniser(config: config, data: world.data, instances: inst, partition: partition, group: g)
        }
        let original = make(1)
        let buf = AuxBatches(B: B, T: T), w = AuxFloats(B), dW = AuxFloats(B)
        let members = partition.members[1]
        func step(_ r: GroupRecogniser, _ k: Int) throws -> [Float] {
            let start = (k * B) % max(1, members.count - B)
            try r.weigh(buf.fill(world.data, inst, members[start..<(start + B)]), id: BatchID(k), weights: w.p)
            for b in 0..<B { dW.p[b] = Float(b % 3) * 0.1 - 0.1 }
            try r.feedback(dWeights: dW.p, B: B, id: BatchID(k))
            return Array(UnsafeBufferPointer(start: w.p, count: B))
        }
        for k in 0..<5 { _ = try step(original, k) }
        let snapshot = try original.snapshot()
        let copy = make(1)
        try copy.restore(snapshot)
        XCTAssertEqual(copy.steps, 5)
        for k in 5..<12 {
            XCTAssertEqual(try step(copy, k), try step(original, k), "step \(k): the same weights")
        }
        XCTAssertEqual(memcmp(copy.recogniser.parameters.values, original.recogniser.parameters.values, copy.recogniser.parameters.count * 4), 0)
        XCTAssertEqual(try copy.trainOwnTask().loss, try original.trainOwnTask().loss)
        XCTAssertThrowsError(try make(0).restore(snapshot), "a snapshot of group 1 does not fit group 0")
        var torn = snapshot; torn[torn.count / 2] ^= 0xFF
        XCTAssertThrowsError(try make(1).restore(torn), "a damaged snapshot is refused by its checksum")
        try original.weigh(buf.fill(world.data, inst, members[0..<B]), id: 99, weights: w.p)
        XCTAssertThrowsError(try original.snapshot(), "no snapshot between a weigh and its feedback")
    }

    func testRecommenderLossAloneTrainsTheRecogniserWhenAlphaIsZero() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0.1)
        var config = ATJTConfig(itemCount: 30, maxLength: 6)
        config.alpha = 0; config.recogniser.dim = 4; config.recogniser.outputHidden = [8]; config.recogniser.dropout = 0
        let weigher = ATJTWeigher(config: config, data: world.data, instances: world.split.train)
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: 6, seed: 1), weighers: weigher.weighers, maxBatch: 8)
        let before = weigher.recognisers[0].parameters.clone()
        let buf = AuxBatches(B: 8, T: 6)
        try trainer.step(buf.fill(world.data, world.split.train, weigher.partition.members[0].prefix(8)), group: 0)
        let after = weigher.recognisers[0].parameters
        XCTAssertNotEqual(memcmp(before.values, after.values, after.count * 4), 0, "dL_R/dw did not reach the recogniser")
        XCTAssertEqual(weigher.lastRecogniserLoss, 0)
        XCTAssertThrowsError(try weigher.weighers[0].feedback(dWeights: after.grads, B: 8, id: 0))
    }

    func testTinyEndToEndRunDecreasesTheLoss() throws {
        let world = AuxWorld(users: 60, items: 50, perUser: 12, noise: 0.2)
        let inst = world.split.train, T = 10, B = 32
        var config = ATJTConfig(itemCount: 50, maxLength: T)
        config.recogniserBatch = 32; config.recogniser.dim = 8; config.recogniser.outputHidden = [16]
        let weigher = ATJTWeigher(config: config, data: world.data, instances: inst)
        let trainer = ATJTTrainer(model: tinySASRec(items: 50, T: T, seed: 4), weighers: weigher.weighers, learningRate: 5e-3, maxBatch: B)
        let buf = AuxBatches(B: B, T: T)
        var epochLoss: [Double] = []
        for _ in 0..<6 {
            var sum = 0.0, n = 0
            for g in 0..<2 {
                let members = weigher.partition.members[g]
                var start = 0
                while start < members.count {
                    let end = min(start + B, members.count)
                    sum += try trainer.step(buf.fill(world.data, inst, members[start..<end]), group: g); n += 1
                    start = end
                }
            }
            epochLoss.append(sum / Double(n))
        }
        XCTAssertLessThan(epochLoss.last!, epochLoss.first! - 0.1, "losses \(epochLoss)")
        XCTAssertTrue(epochLoss.allSatisfy { $0.isFinite })
    }

    /// Each group has its own weigher, and every step announces the next batch, with its id and
    /// its (history, target) rows, to the weigher of that batch's group before the current batch
    /// is weighed: under either scheme, every batch but an epoch's first is prefetched, once, by
    /// the group that then weighs it, with the rows it then weighs.
    func testEachGroupsWeigherIsAskedAheadForItsNextBatch() throws {
        final class Recording: SequenceWeigher {
            let inner: SequenceWeigher
            var calls: [(prefetch: Bool, id: BatchID, rows: [[Int32]])] = []
            var behind: [BatchID: Bool] = [:]
            init(_ inner: SequenceWeigher) { self.inner = inner }
            func rows(_ b: SequenceBatch) -> [[Int32]] {
                (0..<b.B).map { Array(UnsafeBufferPointer(start: b.items + $0 * b.T, count: Int(b.lengths[$0]))) + [b.targets[$0], b.instances[$0]] }
            }
            func prefetch(_ batch: SequenceBatch, id: BatchID, behindCurrent: Bool) throws {
                calls.append((true, id, rows(batch))); behind[id] = behindCurrent
            }
            func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws {
                calls.append((false, id, rows(batch)))
                try inner.weigh(batch, id: id, weights: weights)
            }
            func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws {
                try inner.feedback(dWeights: dWeights, B: B, id: id)
            }
        }
        let world = AuxWorld(users: 24, items: 30, perUser: 10, noise: 0.1)
        for scheme in TrainingScheme.allCases {
            var config = ATJTConfig(itemCount: 30, maxLength: 6)
            config.recogniser.dim = 4; config.recogniser.outputHidden = [8]; config.recogniserBatch = 16
            let weigher = ATJTWeigher(config: config, data: world.data, instances: world.split.train)
            let recorders = weigher.weighers.map(Recording.init)
            let B = scheme == .allPositions ? 4 : 16
            let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: 6, seed: 1), weighers: recorders, maxBatch: B, scheme: scheme)
            try ATJTEpochs(trainer: trainer, weigher: weigher, batchSize: B, seed: 2).run(epoch: 0)
            var weighed: [BatchID] = []
            for (g, recorder) in recorders.enumerated() {
                for (index, call) in recorder.calls.enumerated() where !call.prefetch {
                    weighed.append(call.id)
                    let ahead = recorder.calls[..<index].filter { $0.prefetch && $0.id == call.id }
                    if call.id == 0 { XCTAssertTrue(ahead.isEmpty, "\(scheme.rawValue): the epoch's first batch"); continue }
                    XCTAssertEqual(ahead.count, 1, "\(scheme.rawValue): group \(g) was asked ahead for batch \(call.id) once")
                    XCTAssertEqual(ahead.first?.rows, call.rows, "\(scheme.rawValue): batch \(call.id)'s rows as announced")
                    // behind the current batch exactly when this group weighs one between the announcement and this batch
                    let announced = recorder.calls.firstIndex { $0.prefetch && $0.id == call.id }!
                    let between = recorder.calls[(announced + 1)..<index].contains { !$0.prefetch }
                    XCTAssertEqual(recorder.behind[call.id], between, "\(scheme.rawValue): batch \(call.id) behind the current one")
                }
            }
            XCTAssertEqual(weighed.sorted(), (0..<BatchID(weighed.count)).map { $0 }, scheme.rawValue)
            XCTAssertGreaterThan(recorders.filter { r in r.calls.contains { !$0.prefetch } }.count, 1, "both groups weighed")
            XCTAssertEqual(recorders.map { r in r.calls.filter(\.prefetch).count }.reduce(0, +), weighed.count - 1, scheme.rawValue)
        }
    }
}
