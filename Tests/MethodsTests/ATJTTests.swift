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
            let atjt = ATJTTrainer(model: other, weigher: weigher, maxBatch: B)
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
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: T, seed: 2), weigher: weigher, maxBatch: B)
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
            let trainer = ATJTTrainer(model: tinySASRec(items: 40, T: T, seed: 1), weigher: weigher, maxBatch: B)
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
            // a batch that mixes in another group's instance is refused
            let mixed = [weigher.partition.members[0][0], weigher.partition.members[1][0]]
            let w = AuxFloats(2)
            XCTAssertThrowsError(try weigher.weigh(buf.fill(world.data, inst, mixed[...]), group: 0, weights: w.p)) { e in
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
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: T, seed: 1), weigher: weigher, maxBatch: B)
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
                        try weigher.weigh(batch, group: g, weights: w.p)
                        XCTAssertTrue(isInitial(g), "round \(round), group \(g): weighed by a re-initialised recogniser")
                        try weigher.feedback(dWeights: dW.p, B: n, group: g)
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

    func testRecommenderLossAloneTrainsTheRecogniserWhenAlphaIsZero() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0.1)
        var config = ATJTConfig(itemCount: 30, maxLength: 6)
        config.alpha = 0; config.recogniser.dim = 4; config.recogniser.outputHidden = [8]; config.recogniser.dropout = 0
        let weigher = ATJTWeigher(config: config, data: world.data, instances: world.split.train)
        let trainer = ATJTTrainer(model: tinySASRec(items: 30, T: 6, seed: 1), weigher: weigher, maxBatch: 8)
        let before = weigher.recognisers[0].parameters.clone()
        let buf = AuxBatches(B: 8, T: 6)
        try trainer.step(buf.fill(world.data, world.split.train, weigher.partition.members[0].prefix(8)), group: 0)
        let after = weigher.recognisers[0].parameters
        XCTAssertNotEqual(memcmp(before.values, after.values, after.count * 4), 0, "dL_R/dw did not reach the recogniser")
        XCTAssertEqual(weigher.lastRecogniserLoss, 0)
        XCTAssertThrowsError(try weigher.feedback(dWeights: after.grads, B: 8, group: 0))
    }

    func testTinyEndToEndRunDecreasesTheLoss() throws {
        let world = AuxWorld(users: 60, items: 50, perUser: 12, noise: 0.2)
        let inst = world.split.train, T = 10, B = 32
        var config = ATJTConfig(itemCount: 50, maxLength: T)
        config.recogniserBatch = 32; config.recogniser.dim = 8; config.recogniser.outputHidden = [16]
        let weigher = ATJTWeigher(config: config, data: world.data, instances: inst)
        let trainer = ATJTTrainer(model: tinySASRec(items: 50, T: T, seed: 4), weigher: weigher, learningRate: 5e-3, maxBatch: B)
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
}
