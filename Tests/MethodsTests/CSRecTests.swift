import XCTest
import Numerics
import Models
import Data
import Training
@testable import Methods

final class CSRecTests: XCTestCase {
    /// The student loss (Eq. 15) with CE and either KL direction: analytic gradient on the
    /// logits against central differences.
    func testStudentLossGradientMatchesFiniteDifferencesInBothKLDirections() {
        let B = 3, N = 12
        for direction in [KLDirection.targetToModel, .modelToTarget] {
            let x = FBuf(random: B * N, seed: 5, scale: 1.5), d = FBuf(B * N)
            let teacher = FBuf(random: B * N, seed: 6, scale: 2), r = FBuf(B * N)
            let targets: [Int32] = [3, 12, 1]
            SoftLabels.fromLogits(r.p, logits: teacher.p, targets: targets, temperature: 3, B: B, N: N)
            let losses = FBuf(B)
            let cols: [Int32] = targets.map { $0 - 1 }
            func f(_ grad: Floats?) -> Double {
                let scratch = FBuf(B * N)
                let ce = softmaxCrossEntropy(losses: losses.p, dlogits: grad ?? scratch.p, logits: x.p, targets: cols,
                                             weights: nil, scale: 1 / Float(B), B: B, V: N)
                return CSRecStudentObjective.combine(hardLoss: ce, dlogits: grad ?? scratch.p, logits: x.p, labels: r.p,
                                                     beta: 0.6, direction: direction, losses: losses.p, B: B, N: N)
            }
            _ = f(d.p)
            let check = GradientCheck.check("student \(direction)", x: x.p, analytic: d.p, count: B * N, eps: 1e-2,
                                            tolerance: 2e-2) { f(nil) }
            XCTAssertTrue(check.passed, check.description)
        }
    }

    /// CSRec-T's consistency (both KL directions weighted α, 1 − α) and the noise-matrix term:
    /// gradients on the logits and on the noise factors against central differences.
    func testTrainingLevelTeacherLossGradientsMatchFiniteDifferences() {
        let B = 3, N = 8
        let x = FBuf(random: B * N, seed: 8), side = FBuf(random: B * N, seed: 9, scale: 2), p = FBuf(B * N)
        SoftLabels.fromLogits(p.p, logits: side.p, targets: nil, temperature: 1, B: B, N: N)
        let targets: [Int32] = [2, 8, 5]
        let noise = NoiseMatrix(itemCount: N, rank: 3, seed: 1)
        var g = RNG(seed: 4)
        Init.normal(noise.parameters.values, noise.parameters.count, std: 0.7, rng: &g)
        let losses = FBuf(B), d = FBuf(B * N)
        func f(_ grad: Floats?) -> Double {
            let c = CSRecTeacherObjective.consistency(logits: x.p, dlogits: grad, side: p.p, alpha: 0.3, losses: losses.p, B: B, N: N)
            return c + noise.regulariser(logits: x.p, dlogits: grad, targets: targets, weight: 1, B: B)
        }
        noise.parameters.zeroGrad()
        _ = f(d.p)
        let analyticNoise = FBuf(noise.parameters.count)
        analyticNoise.p.update(from: noise.parameters.grads, count: noise.parameters.count)
        let c1 = GradientCheck.check("dlogits", x: x.p, analytic: d.p, count: B * N, eps: 1e-2, tolerance: 2e-2) { f(nil) }
        XCTAssertTrue(c1.passed, c1.description)
        let c2 = GradientCheck.check("dnoise", x: noise.parameters.values, analytic: analyticNoise.p, count: noise.parameters.count,
                                     eps: 1e-2, tolerance: 2e-2) { f(nil) }
        XCTAssertTrue(c2.passed, c2.description)
    }

    func testNoiseMatrixColumnsAreDistributions() {
        let N = 6
        let noise = NoiseMatrix(itemCount: N, rank: 2, seed: 3)
        for j in 0..<N {
            let s = (0..<N).reduce(Float(0)) { $0 + expf(noise.logH($1, j)) }
            XCTAssertEqual(s, 1, accuracy: 1e-5)
        }
    }

    /// Data-level subsets are of users (Alg. 2 samples sequences s_u; the authors draw
    /// int(p · #users) users): round(p · U) users, each with all of its training instances.
    func testDataLevelSubsampleKeepsFractionPOfTheUsersWithAllTheirInstances() {
        let data = cyclicDataset()
        let train = LeaveOneOut(data).train
        let sub = CSRecTeachers.subsample(train, p: 0.8, seed: 1)
        let users = Set(sub.users), all = Set(train.users)
        XCTAssertEqual(users.count, Int((Float(all.count) * 0.8).rounded()))
        for u in users {
            XCTAssertEqual(sub.users.filter { $0 == u }.count, train.users.filter { $0 == u }.count, "user \(u) kept whole")
        }
        let pairs = Set(zip(sub.users, sub.positions).map { "\($0)-\($1)" })
        XCTAssertEqual(pairs.count, sub.count)
        XCTAssertTrue(pairs.isSubset(of: Set(zip(train.users, train.positions).map { "\($0)-\($1)" })))
        XCTAssertNotEqual(Set(CSRecTeachers.subsample(train, p: 0.8, seed: 2).users), users, "another seed, other users")
        XCTAssertEqual(Set(CSRecTeachers.subsample(train, p: 0.01, seed: 1).users).count, 1, "at least one user")
    }

    /// Each teacher kind trains, and the student's loss falls under its soft labels.
    func testEachTeacherKindTrainsAndTheStudentLossDecreases() throws {
        let data = cyclicDataset()
        let train = LeaveOneOut(data).train
        for kind in CSRecTeacherKind.allCases {
            var c = CSRecConfig(); c.teachers = kind; c.m = 2; c.noiseRank = 4; c.temperature = 3
            let loop = quickLoop(data, epochs: 2, maxLength: 8)
            let source = try CSRecTeachers.buildTiny(c, loop: loop, instances: train)
            XCTAssertEqual(source.teachers.count, kind == .training ? 1 : 2)
            let student = labelsSASRec(items: data.itemCount, seed: 9)
            let objective = CSRecStudentObjective(source: source, beta: c.beta, temperature: c.temperature)
            let fit = try quickLoop(data, epochs: 5).fit(model: student, instances: train, objective: objective, validate: nil)
            XCTAssertLessThan(fit.losses.last!, fit.losses.first!, "\(kind): \(fit.losses)")
        }
    }
}

extension CSRecTeachers {
    /// `build` with tiny SASRec teachers (the protocol's sizes are slow in debug tests).
    static func buildTiny(_ config: CSRecConfig, loop: LabelLoop, instances: InstanceSet) throws -> ModelSoftLabelSource {
        try build(config, make: { labelsSASRec(items: loop.data.itemCount, maxLength: loop.config.maxLength, seed: $0) },
                  loop: loop, instances: instances, validate: nil, seed: 1)
    }
}
