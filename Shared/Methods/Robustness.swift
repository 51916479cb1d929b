// The robustness suite (issue 6; DSS §4.3, CSRec Fig. 1/3): corrupt a fraction of the training
// clicks with uniformly random items, train base / DSS / ATJT on each corrupted copy, report test
// metrics, the relative drop against the clean run, niche- vs popular-user groups, and the
// recogniser's AUC at telling corrupted from clean training sequences.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Numerics
import Models
import Data
import Evaluation
import Training

// MARK: - Corruption and groups

public enum RobustnessData {
    /// Replaces exactly round(fraction · C) of the C training clicks (each user's items before its
    /// validation item, i.e. the first n − 2 of n >= 3, or all of a shorter sequence) by uniformly
    /// random *different* items; validation and test items are untouched. Returns the corrupted
    /// data and a flag per interaction (aligned with `data.items`).
    public static func corruptTrainingClicks(_ data: SequenceDataset, fraction: Double, seed: UInt64) -> (SequenceDataset, [Bool]) {
        precondition(fraction >= 0 && fraction <= 1, "fraction must be in 0...1")
        var positions: [Int] = []
        for u in 0..<data.userCount {
            let n = data.length(u), end = n >= 3 ? n - 2 : n
            for t in 0..<end { positions.append(data.offsets[u] + t) }
        }
        var rng = RNG(seed: seed).derived(0xC0)
        positions.withUnsafeMutableBufferPointer { rng.shuffle($0) }
        let count = Int((fraction * Double(positions.count)).rounded())
        var items = data.items, flags = [Bool](repeating: false, count: items.count)
        if data.itemCount >= 2 {
            for p in positions.prefix(count) {
                var v: Int32
                repeat { v = Int32(1 + rng.below( data.itemCount)) } while v == items[p]
                items[p] = v; flags[p] = true
            }
        }
        let sequences = (0..<data.userCount).map { u in Array(items[data.offsets[u] ..< data.offsets[u + 1]]) }
        return (SequenceDataset(sequences: sequences, itemCount: data.itemCount), flags)
    }

    /// Test instances split by whether their target is among the top `fraction` of items by
    /// frequency in the training part (CSRec's popular / niche users).
    public static func popularityGroups(_ data: SequenceDataset, split: LeaveOneOut, fraction: Double = 0.2) -> (popular: InstanceSet, niche: InstanceSet) {
        var freq = [Int](repeating: 0, count: data.itemCount + 1)
        for k in 0..<split.train.count { freq[Int(split.train.target(k, in: data))] += 1 }
        // each user's first item is never a training target; count it too
        for u in 0..<data.userCount where data.length(u) >= 1 { freq[Int(data.items[data.offsets[u]])] += 1 }
        let ranked = (1...max(data.itemCount, 1)).sorted { freq[$0] > freq[$1] || (freq[$0] == freq[$1] && $0 < $1) }
        let top = Set(ranked.prefix(Int((fraction * Double(data.itemCount)).rounded(.up))).map(Int32.init))
        var pu: [Int32] = [], pp: [Int32] = [], nu: [Int32] = [], np: [Int32] = []
        for k in 0..<split.test.count {
            if top.contains(split.test.target(k, in: data)) { pu.append(split.test.users[k]); pp.append(split.test.positions[k]) }
            else { nu.append(split.test.users[k]); np.append(split.test.positions[k]) }
        }
        return (InstanceSet(users: pu, positions: pp), InstanceSet(users: nu, positions: np))
    }
}

/// Area under the ROC curve of `scores` for telling `positive` rows from the others (ties count
/// one half); nil when either class is empty.
public func binaryAUC(scores: [Float], positive: [Bool]) -> Double? {
    precondition(scores.count == positive.count, "one label per score")
    let order = scores.indices.sorted { scores[$0] < scores[$1] }
    var rankSum = 0.0, pos = 0
    var i = 0
    while i < order.count {
        var j = i
        while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
        let avgRank = Double(i + j) / 2 + 1
        for k in i...j where positive[order[k]] { rankSum += avgRank; pos += 1 }
        i = j + 1
    }
    let neg = scores.count - pos
    guard pos > 0 && neg > 0 else { return nil }
    return (rankSum - Double(pos) * Double(pos + 1) / 2) / (Double(pos) * Double(neg))
}

// MARK: - Training runs

/// Which training method a robustness run uses: base, an auxiliary-task method, a label method
/// (CSRec, UFNRec), or an auxiliary-task method composed with one (the name joins them with "+").
public enum RobustnessMethod: String, Sendable, CaseIterable, Codable {
    case base, dss, atjt, csrec, ufnrec
    /// DSS whose seq2item part also fits CSRec's soft labels.
    case dssCSRec = "dss+csrec"
    /// ATJT whose weights scale CSRec's per-sequence student loss.
    case atjtCSRec = "atjt+csrec"
    /// ATJT whose weights scale UFNRec's row loss.
    case atjtUFNRec = "atjt+ufnrec"

    /// Whether the run needs CSRec's teachers.
    public var usesCSRec: Bool { self == .csrec || self == .dssCSRec || self == .atjtCSRec }
    /// Whether the recommender is DSS's encoder (SASRec only).
    public var usesDSS: Bool { self == .dss || self == .dssCSRec }

    /// Parses a method name; parts may come in any order ("csrec+atjt"). Compositions that exist
    /// as words but are not supported are refused with the reason.
    public static func parse(_ name: String) throws -> RobustnessMethod {
        let parts = name.lowercased().split(separator: "+").map { $0.trimmingCharacters(in: .whitespaces) }
        let known: Set<String> = ["base", "dss", "atjt", "csrec", "wslrec", "ufnrec"]
        guard !parts.isEmpty, parts.allSatisfy(known.contains) else { throw RobustnessMethodError.unknown(name) }
        let set = Set(parts)
        for (a, b) in AuxiliaryComposition.refused where set.contains(a) && set.contains(b) {
            throw RobustnessMethodError.unsupported(name, reason: AuxiliaryComposition.whyNot(a, b))
        }
        let aux = parts.filter { $0 == "dss" || $0 == "atjt" }.sorted()
        let label = parts.filter { $0 != "dss" && $0 != "atjt" && $0 != "base" }.sorted()
        if set.contains("base") {
            guard parts.count == 1 else { throw RobustnessMethodError.unsupported(name, reason: "base composes with nothing") }
            return .base
        }
        guard !label.contains("wslrec") else {
            throw RobustnessMethodError.unsupported(name, reason: "WSLRec has its own protocol and stages; it runs in `winnow experiment labels`")
        }
        guard Set(label).count <= 1 else {
            throw RobustnessMethodError.unsupported(name, reason: "the robustness suite composes at most one label method (ufnrec + csrec and atjt + ufnrec + csrec run as jobs: `winnow experiment job`)")
        }
        guard let m = RobustnessMethod(rawValue: (aux + Array(Set(label))).joined(separator: "+")) else {
            throw RobustnessMethodError.unknown(name)
        }
        return m
    }
}

/// A `--methods` entry that is not a robustness method.
public enum RobustnessMethodError: Error, CustomStringConvertible, Equatable {
    /// Not a method name.
    case unknown(String)
    /// Known methods whose composition is not supported, and why.
    case unsupported(String, reason: String)
    public var description: String {
        switch self {
        case .unknown(let n): return "unknown method '\(n)' (base, dss, atjt, csrec, ufnrec, dss+csrec, atjt+csrec, atjt+ufnrec)"
        case .unsupported(let n, let r): return "method '\(n)' is not supported: \(r)"
        }
    }
}

/// Settings of one robustness experiment (every method shares them).
public struct RobustnessConfig {
    public var model: ModelKind = .sasrec
    public var maxLength = 50
    public var batchSize = 256
    public var maxEpochs = 200
    public var patience = 10
    public var learningRate: Float = 1e-3
    public var seed: UInt64 = 1
    /// SASRec / GRU4Rec sizes for small smoke runs (nil = the protocol's).
    public var dim: Int? = nil
    public var blocks: Int? = nil
    /// DSS: K and λ.
    public var interests = 4
    public var lambda: Float = 0.5
    /// ATJT: α, groups, recogniser learning rate.
    public var alpha: Float = 10
    public var groups = 2
    public var recogniserLearningRate: Float = 0.01
    /// CSRec (csrec, dss+csrec, atjt+csrec): teachers, β, τ, KL direction.
    public var csrec = CSRecConfig()
    /// UFNRec (ufnrec, atjt+ufnrec).
    public var ufnrec = UFNRecConfig()
    public var log: ((String) -> Void)? = nil
    public init() {}

    /// The loop settings the teachers and the early stopping share.
    var loop: LoopConfig {
        var l = LoopConfig()
        l.maxEpochs = maxEpochs; l.patience = patience; l.batchSize = batchSize; l.maxLength = maxLength
        l.learningRate = learningRate; l.seed = seed; l.selectMetric = "ndcg@10"
        l.scheme = .prefixes   // every method of the comparison trains so (see JobConfig.validate)
        return l
    }
}

/// What one training run produced.
public struct RobustnessRun: Sendable, Codable {
    public var method: String
    public var model: String
    public var corruption: Double
    public var seed: UInt64
    public var epochs: Int
    public var bestEpoch: Int
    /// Wall time of the run, CSRec's teachers included.
    public var seconds: Double
    public var valid: [String: Double]
    public var test: [String: Double]
    public var popular: [String: Double]
    public var niche: [String: Double]
    /// ATJT: AUC of w for clean vs corrupted-target training sequences (each weighed by the
    /// recogniser that never trained on it).
    public var recogniserAUC: Double?
    /// With CSRec: seconds its teachers took (included in `seconds`; absent otherwise).
    public var teacherSeconds: Double?
}

/// CSRec's trained teachers for one corrupted copy, shared by every method that uses them.
public struct RobustnessTeachers {
    public let source: SoftLabelSource
    public let seconds: Double
}

public enum RobustnessTrainer {
    static func backbone(_ cfg: RobustnessConfig, itemCount: Int, seed: UInt64? = nil) -> Backbone {
        switch cfg.model {
        case .sasrec:
            var c = SASRecConfig(itemCount: itemCount); c.maxLength = cfg.maxLength; c.seed = seed ?? cfg.seed
            if let d = cfg.dim { c.dim = d; c.inner = 4 * d }
            if let b = cfg.blocks { c.blocks = b }
            return SASRec(c)
        case .gru4rec:
            var c = GRU4RecConfig(itemCount: itemCount); c.maxLength = cfg.maxLength; c.seed = seed ?? cfg.seed
            if let d = cfg.dim { c.embedding = d; c.hidden = 2 * d }
            return GRU4Rec(c)
        }
    }

    static func evaluate(_ model: Backbone, data: SequenceDataset, instances: InstanceSet, maxLength: Int) -> [String: Double] {
        guard instances.count > 0 else { return [:] }
        let K = model.interests, C = model.dim
        let evaluator = RankingEvaluator(itemCount: model.itemCount, dim: C, maxBatch: 256, interests: K, ks: [10, 20])
        let report = evaluator.evaluateFullRanking(EvaluationInput(data: data, instances: instances, maxLength: maxLength),
                                                   items: model.scoringTable) { items, lengths, n, out in
            let u = model.forward(items: items, lengths: lengths, B: n, training: false)
            out.update(from: u, count: n * K * C)
        }
        return report.metrics.filter { ["ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "mrr@20"].contains($0.key) }
    }

    /// Trains CSRec's teachers (`cfg.csrec`, the run's backbone) on `data` (already corrupted:
    /// the teachers see the same noisy clicks as the student), early-stopped on validation NDCG@10.
    public static func teachers(data: SequenceDataset, cfg: RobustnessConfig) throws -> RobustnessTeachers {
        let split = LeaveOneOut(data), T = cfg.maxLength, started = Date()
        let loop = LabelLoop(data: data, config: cfg.loop)
        loop.progress = cfg.log.map { log in { log("csrec" + $0) } }
        let source = try CSRecTeachers.build(cfg.csrec, make: { backbone(cfg, itemCount: data.itemCount, seed: $0) }, loop: loop,
                                             instances: split.train,
                                             validate: { evaluate($0, data: data, instances: split.validation, maxLength: T) },
                                             seed: cfg.seed)
        return RobustnessTeachers(source: source, seconds: Date().timeIntervalSince(started))
    }

    /// Trains `method` on `data` (already corrupted) with early stopping on validation NDCG@10 and
    /// evaluates the best weights on the test split and its popular / niche groups. `noisy` flags
    /// corrupted interactions (for the recogniser's AUC). Methods with CSRec need `teachers`
    /// (trained on the same `data`); their time is added to the run's.
    public static func run(_ method: RobustnessMethod, data: SequenceDataset, corruption: Double, noisy: [Bool],
                           groups: (popular: InstanceSet, niche: InstanceSet), cfg: RobustnessConfig,
                           teachers: RobustnessTeachers? = nil) throws -> RobustnessRun {
        let split = LeaveOneOut(data)
        let T = cfg.maxLength, B = cfg.batchSize
        let started = Date()
        precondition(!method.usesCSRec || teachers != nil, "\(method.rawValue) needs CSRec's teachers")
        let distillation = teachers.map {
            CSRecDistillation(source: $0.source, beta: cfg.csrec.beta, temperature: cfg.csrec.temperature,
                              direction: cfg.csrec.direction.direction)
        }
        let validate: ModelEvaluation = { evaluate($0, data: data, instances: split.validation, maxLength: T) }
        let model: Backbone
        var epoch: ((Int) throws -> Double)? = nil
        var trained: FitResult? = nil      // a method that runs its own loop (csrec: LabelLoop)
        var atjtWeigher: ATJTWeigher? = nil
        var note: () -> String = { "" }   // extra per-epoch log text (ATJT: weight statistics)
        var evaluated: (() -> Backbone)? = nil   // ATJT + UFNRec: the EMA teacher after warm-up
        switch method {
        case .base, .csrec, .ufnrec:
            let m = backbone(cfg, itemCount: data.itemCount)
            model = m
            // base, UFNRec and the CSRec student as `winnow experiment labels` trains them: the
            // one loop with the method's objective (UFNRec's EMA teacher the same backbone)
            let objective: LabelObjective
            if method == .ufnrec {
                objective = UFNRecObjective(config: cfg.ufnrec, student: m, teacher: backbone(cfg, itemCount: data.itemCount), seed: cfg.seed,
                                            history: TrainingSequences(data: data, instances: split.train))
            } else if method == .csrec, let d = distillation {
                objective = CSRecStudentObjective(source: d.source, beta: d.beta, temperature: d.temperature, direction: d.direction)
            } else {
                objective = CrossEntropyObjective()
            }
            let loop = LabelLoop(data: data, config: cfg.loop)
            loop.progress = cfg.log.map { log in { log("\(method.rawValue) corruption \(corruption) \($0)") } }
            trained = try loop.fit(model: m, instances: split.train, objective: objective, validate: validate)
        case .dss, .dssCSRec:
            precondition(cfg.model == .sasrec, "DSS is built on SASRec")
            var c = DSSConfig(itemCount: data.itemCount)
            c.encoder.maxLength = T; c.encoder.seed = cfg.seed; c.encoder.interests = cfg.interests
            if let d = cfg.dim { c.encoder.dim = d; c.encoder.inner = 4 * d }
            if let b = cfg.blocks { c.encoder.blocks = b }
            c.lambda = cfg.lambda; c.learningRate = cfg.learningRate
            let trainer = DSSTrainer(config: c, data: data, instances: split.train, maxBatch: B,
                                     distillation: method == .dssCSRec ? distillation : nil)
            model = trainer.model
            let epochs = DSSEpochs(trainer: trainer, batchSize: B, seed: cfg.seed)
            epoch = { try epochs.run(epoch: $0) }
        case .atjt, .atjtCSRec, .atjtUFNRec:
            let m = backbone(cfg, itemCount: data.itemCount)
            model = m
            var c = ATJTConfig(itemCount: data.itemCount, maxLength: T)
            c.groups = cfg.groups; c.alpha = cfg.alpha; c.recogniserLearningRate = cfg.recogniserLearningRate
            c.seed = cfg.seed; c.recogniserBatch = B
            let weigher = ATJTWeigher(config: c, data: data, instances: split.train)
            atjtWeigher = weigher
            var loss: WeightedSequenceLoss? = nil
            if method == .atjtCSRec, let d = distillation {
                loss = WeightedCSRecStudent(source: d.source, beta: d.beta, temperature: d.temperature, direction: d.direction)
            } else if method == .atjtUFNRec {
                let u = UFNRecObjective(config: cfg.ufnrec, student: m, teacher: backbone(cfg, itemCount: data.itemCount), seed: cfg.seed,
                                        history: TrainingSequences(data: data, instances: split.train))
                loss = u
                evaluated = { u.evaluated }
            }
            let trainer = ATJTTrainer(model: m, weighers: weigher.weighers, learningRate: cfg.learningRate, maxBatch: B, loss: loss)
            let epochs = ATJTEpochs(trainer: trainer, weigher: weigher, batchSize: B, seed: cfg.seed)
            epoch = { try epochs.run(epoch: $0) }
            note = { epochs.summary }
        }
        let epochLoop = TrainingLoop(data: data, config: cfg.loop)
        epochLoop.progress = cfg.log.map { log in { p in
            guard p.event == .epoch else { return }
            log("\(method.rawValue) corruption \(corruption) epoch \(p.epoch): loss \(String(format: "%.4f", p.loss)) valid ndcg@10 \(String(format: "%.4f", p.valid["ndcg@10"] ?? 0))\(note())")
        } }
        let fit = try trained ?? epochLoop.fit(model: model, validate: validate, evaluated: evaluated) { try epoch!($0 - 1) }
        let test = evaluate(model, data: data, instances: split.test, maxLength: T)
        let popular = evaluate(model, data: data, instances: groups.popular, maxLength: T)
        let niche = evaluate(model, data: data, instances: groups.niche, maxLength: T)
        var auc: Double? = nil
        if let weigher = atjtWeigher, noisy.contains(true) {
            let all = (0..<split.train.count).map { Int32($0) }
            let w = weigher.evaluate(ids: all)
            let clean = all.map { k -> Bool in
                let u = Int(split.train.users[Int(k)])
                return !noisy[data.offsets[u] + Int(split.train.positions[Int(k)])]
            }
            auc = binaryAUC(scores: w, positive: clean)
        }
        let teacherSeconds = method.usesCSRec ? teachers?.seconds : nil
        return RobustnessRun(method: method.rawValue, model: model.name, corruption: corruption, seed: cfg.seed, epochs: fit.epochs,
                             bestEpoch: fit.bestEpoch, seconds: Date().timeIntervalSince(started) + (teacherSeconds ?? 0),
                             valid: fit.bestValid, test: test, popular: popular, niche: niche, recogniserAUC: auc,
                             teacherSeconds: teacherSeconds)
    }
}

// MARK: - Plots

/// A tiny SVG line-plot writer (no dependencies): one polyline with markers per series, axes
/// with ticks, a legend.
public enum SVGPlot {
    public struct Series: Sendable {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) { self.name = name; self.points = points }
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    static func fmt(_ v: Double) -> String { String(format: "%.4g", v) }

    /// The SVG document of a line chart.
    public static func lineChart(title: String, xLabel: String, yLabel: String, series: [Series],
                                 width: Double = 640, height: Double = 420) -> String {
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        let left = 70.0, right = 160.0, top = 40.0, bottom = 55.0
        let pw = width - left - right, ph = height - top - bottom
        let xs = series.flatMap { $0.points.map(\.x) }, ys = series.flatMap { $0.points.map(\.y) }.filter { $0.isFinite }
        var x0 = xs.min() ?? 0, x1 = xs.max() ?? 1, y0 = min(ys.min() ?? 0, 0), y1 = ys.max() ?? 1
        if x1 <= x0 { x1 = x0 + 1 }
        if y1 <= y0 { y1 = y0 + 1 }
        y1 += (y1 - y0) * 0.05
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * pw }
        func py(_ y: Double) -> Double { top + ph - (y - y0) / (y1 - y0) * ph }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(fmt(width))\" height=\"\(fmt(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(fmt(left + pw / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">\(escape(title))</text>\n"
        s += "<line x1=\"\(fmt(left))\" y1=\"\(fmt(top + ph))\" x2=\"\(fmt(left + pw))\" y2=\"\(fmt(top + ph))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(fmt(left))\" y1=\"\(fmt(top))\" x2=\"\(fmt(left))\" y2=\"\(fmt(top + ph))\" stroke=\"black\"/>\n"
        for i in 0...5 {
            let xv = x0 + (x1 - x0) * Double(i) / 5, yv = y0 + (y1 - y0) * Double(i) / 5
            s += "<line x1=\"\(fmt(px(xv)))\" y1=\"\(fmt(top + ph))\" x2=\"\(fmt(px(xv)))\" y2=\"\(fmt(top + ph + 5))\" stroke=\"black\"/>"
            s += "<text x=\"\(fmt(px(xv)))\" y=\"\(fmt(top + ph + 18))\" text-anchor=\"middle\">\(fmt(xv))</text>\n"
            s += "<line x1=\"\(fmt(left - 5))\" y1=\"\(fmt(py(yv)))\" x2=\"\(fmt(left + pw))\" y2=\"\(fmt(py(yv)))\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(fmt(left - 8))\" y=\"\(fmt(py(yv) + 4))\" text-anchor=\"end\">\(fmt(yv))</text>\n"
        }
        s += "<text x=\"\(fmt(left + pw / 2))\" y=\"\(fmt(height - 12))\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        s += "<text x=\"16\" y=\"\(fmt(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(fmt(top + ph / 2)))\">\(escape(yLabel))</text>\n"
        for (i, se) in series.enumerated() {
            let color = colors[i % colors.count]
            let pts = se.points.filter { $0.y.isFinite }.sorted { $0.x < $1.x }
            if !pts.isEmpty {
                s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"" + pts.map { "\(fmt(px($0.x))),\(fmt(py($0.y)))" }.joined(separator: " ") + "\"/>\n"
                for p in pts { s += "<circle cx=\"\(fmt(px(p.x)))\" cy=\"\(fmt(py(p.y)))\" r=\"3\" fill=\"\(color)\"/>" }
                s += "\n"
            }
            let ly = top + 10 + Double(i) * 18
            s += "<line x1=\"\(fmt(left + pw + 15))\" y1=\"\(fmt(ly))\" x2=\"\(fmt(left + pw + 35))\" y2=\"\(fmt(ly))\" stroke=\"\(color)\" stroke-width=\"2\"/>"
            s += "<text x=\"\(fmt(left + pw + 40))\" y=\"\(fmt(ly + 4))\">\(escape(se.name))</text>\n"
        }
        s += "</svg>\n"
        return s
    }
}
