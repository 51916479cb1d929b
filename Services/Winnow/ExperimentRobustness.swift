import ArgumentParser
import Foundation
import Numerics
import Data
import Models
import Training
import Methods

/// `winnow experiment robustness`: corrupt a fraction of the training clicks with uniformly random
/// items, train base, DSS and ATJT (and CSRec or UFNRec, alone or composed with them) on each copy, and
/// report test metrics, the relative drop against the clean run, popular- vs niche-user groups and
/// the recogniser's AUC.
struct ExperimentRobustness: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "robustness",
        abstract: "Robustness to corrupted training clicks: base vs DSS vs ATJT, alone or with CSRec (leave-one-out, full ranking).",
        discussion: """
        Data: --dataset FILE.inter (RecBole atomic file, iterative 5-core, the experiment protocol) or \
        --synthetic USERS,ITEMS,INTERACTIONS (generated in process, no injected noise of its own). \
        For each corruption level p, round(p · C) of the C training clicks (validation and test items \
        untouched) are replaced by uniformly random different items; each method trains with early \
        stopping on validation NDCG@10 and is tested with its best weights. Writes runs.jsonl (one \
        run per line; started again with the same --out and settings, fits already in it are not \
        trained again, so a stopped sweep continues where it stopped), robustness.md (means ± std over seeds, relative drop vs p = 0, popular / niche \
        users — test item in / outside the top 20 % of items by training frequency — recogniser AUC \
        for clean vs corrupted-target training sequences, wall time relative to base) and SVG plots. \
        Methods with CSRec (csrec, dss+csrec, atjt+csrec) share one teacher module per seed and \
        level, trained on the same corrupted copy; its time is charged to each of them.
        """
    )

    @Option(help: "RecBole .inter file (5-core applied).") var dataset: String?
    @Option(help: "Synthetic data USERS,ITEMS,INTERACTIONS instead of --dataset.") var synthetic: String?
    @Option(help: "Corruption levels, comma-separated fractions.") var levels: String = "0,0.1,0.2,0.3,0.5"
    @Option(help: "Methods, comma-separated: base, dss, atjt, csrec, ufnrec, dss+csrec, atjt+csrec, atjt+ufnrec.") var methods: String = "base,dss,atjt"
    @Option(help: "Backbone: sasrec or gru4rec (DSS always uses its SASRec encoder).") var model: String = "sasrec"
    @Option(help: "Seeds, comma-separated.") var seeds: String = "1"
    @Option(help: "Maximum epochs.") var epochs: Int = 200
    @Option(help: "Early-stopping patience in epochs.") var patience: Int = 10
    @Option(name: .customLong("batch-size"), help: "Batch size.") var batchSize: Int = 256
    @Option(name: .customLong("max-length"), help: "Input length T.") var maxLength: Int = 50
    @Option(help: "Adam learning rate.") var lr: Float = 1e-3
    @Option(help: "Embedding size (default: the protocol's 64).") var dim: Int?
    @Option(help: "SASRec blocks (default: the protocol's 2).") var blocks: Int?
    @Option(help: "DSS: intentions K.") var interests: Int = 4
    @Option(help: "DSS: λ, fraction of seq2seq terms kept.") var lambda: Float = 0.5
    @Option(help: "ATJT: weight α of the recogniser loss.") var alpha: Float = 10
    @Option(help: "ATJT: number of groups N.") var groups: Int = 2
    @Option(name: .customLong("recogniser-lr"), help: "ATJT: Adagrad learning rate of the recogniser.") var recogniserLR: Float = 0.01
    @Option(help: "CSRec: teacher module, model, data or training.") var teachers: String = "model"
    @Option(help: "CSRec: weight β of the soft-label KL.") var beta: Float = 0.5
    @Option(help: "CSRec: soft-label temperature τ.") var temperature: Float = 1
    @Option(name: .customLong("ufnrec-m"), help: "UFNRec: reversal threshold m.") var ufnrecM: Int = 5
    @Option(name: .customLong("ufnrec-alpha"), help: "UFNRec: weight α of the consistency loss.") var ufnrecAlpha: Float = 0.3
    @Option(name: .customLong("ufnrec-decay"), help: "UFNRec: EMA decay d of the teacher.") var ufnrecDecay: Float = 0.999
    @Option(help: "Threads for BLAS and parallel loops.") var threads: Int = 1
    @Option(help: "Output directory.") var out: String
    @Flag(help: "Print only the summary.") var quiet = false

    var levelList: [Double] { levels.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) } }
    var methodList: [RobustnessMethod] { methods.split(separator: ",").compactMap { try? RobustnessMethod.parse(String($0)) } }
    var ufnrecConfig: UFNRecConfig {
        var u = UFNRecConfig(); u.m = ufnrecM; u.alpha = ufnrecAlpha; u.decay = ufnrecDecay
        return u
    }
    var seedList: [UInt64] { seeds.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) } }

    func validate() throws {
        guard (dataset == nil) != (synthetic == nil) else { throw ValidationError("give exactly one of --dataset and --synthetic") }
        if let s = synthetic, s.split(separator: ",").compactMap({ Int($0) }).count != 3 {
            throw ValidationError("--synthetic wants USERS,ITEMS,INTERACTIONS, got '\(s)'")
        }
        let l = levels.split(separator: ",")
        guard !l.isEmpty, levelList.count == l.count, levelList.allSatisfy({ $0 >= 0 && $0 <= 1 }) else {
            throw ValidationError("--levels must be fractions in 0...1, got '\(levels)'")
        }
        for name in methods.split(separator: ",") {
            do { _ = try RobustnessMethod.parse(String(name)) } catch { throw ValidationError("--methods: \(error)") }
        }
        guard !methodList.isEmpty else { throw ValidationError("--methods must be a list of base, dss, atjt, csrec, ufnrec, dss+csrec, atjt+csrec, atjt+ufnrec, got '\(methods)'") }
        guard CSRecTeacherKind(rawValue: teachers) != nil else { throw ValidationError("--teachers must be model, data or training, got '\(teachers)'") }
        var c = CSRecConfig(); c.teachers = CSRecTeacherKind(rawValue: teachers)!; c.beta = beta; c.temperature = temperature
        do { try c.validate(); try ufnrecConfig.validate() } catch { throw ValidationError("\(error)") }
        guard ModelKind(rawValue: model) != nil else { throw ValidationError("--model must be sasrec or gru4rec, got '\(model)'") }
        guard !seedList.isEmpty, seedList.count == seeds.split(separator: ",").count else { throw ValidationError("--seeds must be integers, got '\(seeds)'") }
        guard epochs >= 1, patience >= 1, batchSize >= 2, maxLength >= 1 else { throw ValidationError("epochs, patience, max-length >= 1 and batch-size >= 2") }
        guard lambda >= 0 && lambda <= 1 else { throw ValidationError("--lambda must be in 0...1") }
        guard groups >= 2 else { throw ValidationError("--groups must be >= 2") }
        guard interests >= 1 else { throw ValidationError("--interests must be >= 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
    }

    func loadData() throws -> SequenceDataset {
        if let path = dataset {
            let interactions = try InterReader().read(path: path)
            return SequenceDataset(interactions, userK: 5, itemK: 5)
        }
        let p = synthetic!.split(separator: ",").map { Int($0)! }
        let spec = SyntheticSpec(users: p[0], items: p[1], interactions: p[2], noiseRate: 0, seed: 1,
                                 topics: min(100, max(1, p[1] / 10)))
        let s = try Synthetic.generate(spec)
        return SequenceDataset(sequences: (0..<p[0]).map { Array(s.sequence(ofUser: $0)) }, itemCount: p[1])
    }

    func run() throws {
        Threads.set(threads)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let clean = try loadData()
        let kind = ModelKind(rawValue: model)!
        let groupsByPopularity = RobustnessData.popularityGroups(clean, split: LeaveOneOut(clean))
        if !quiet {
            print("data: \(clean.userCount) users, \(clean.itemCount) items, \(clean.interactionCount) interactions; "
                  + "test users popular \(groupsByPopularity.popular.count), niche \(groupsByPopularity.niche.count)")
        }
        let runsPath = out + "/runs.jsonl"
        // Every setting a run depends on; seeds, levels and methods may grow between invocations.
        var settings: [String: String] = [
            "data": dataset ?? "synthetic \(synthetic ?? "")", "users": "\(clean.userCount)", "items": "\(clean.itemCount)",
            "interactions": "\(clean.interactionCount)", "model": model, "epochs": "\(epochs)", "patience": "\(patience)",
            "batch_size": "\(batchSize)", "max_length": "\(maxLength)", "lr": "\(lr)", "dim": dim.map(String.init) ?? "protocol",
            "blocks": blocks.map(String.init) ?? "protocol", "interests": "\(interests)", "lambda": "\(lambda)", "alpha": "\(alpha)",
            "groups": "\(groups)", "recogniser_lr": "\(recogniserLR)", "teachers": teachers, "beta": "\(beta)",
            "temperature": "\(temperature)"]
        settings["ufnrec"] = "m \(ufnrecM) alpha \(ufnrecAlpha) decay \(ufnrecDecay)"
        let directory: ExperimentDirectory
        do { directory = try ExperimentDirectory(path: out, settings: settings) } catch { throw ValidationError("\(error)") }
        var runs = try directory.records("runs.jsonl", as: RobustnessRun.self)
        if !runs.isEmpty && !quiet { print("\(runsPath): \(runs.count) runs from before; those fits are not trained again") }
        for seed in seedList {
            for level in levelList {
                let (data, flags) = RobustnessData.corruptTrainingClicks(clean, fraction: level, seed: seed)
                var teacherModule: RobustnessTeachers? = nil   // CSRec's, trained once for this copy
                for method in methodList {
                    if method.usesDSS && kind != .sasrec {
                        if !quiet { print("\(method.rawValue): skipped for \(model) (DSS's encoder is SASRec)") }
                        continue
                    }
                    if runs.contains(where: { $0.method == method.rawValue && $0.corruption == level && $0.seed == seed }) { continue }
                    var cfg = RobustnessConfig()
                    cfg.model = kind; cfg.maxLength = maxLength; cfg.batchSize = batchSize; cfg.maxEpochs = epochs
                    cfg.patience = patience; cfg.learningRate = lr; cfg.seed = seed; cfg.dim = dim; cfg.blocks = blocks
                    cfg.interests = interests; cfg.lambda = lambda; cfg.alpha = alpha; cfg.groups = groups
                    cfg.recogniserLearningRate = recogniserLR
                    cfg.csrec.teachers = CSRecTeacherKind(rawValue: teachers)!; cfg.csrec.beta = beta; cfg.csrec.temperature = temperature
                    cfg.ufnrec = ufnrecConfig
                    if !quiet { cfg.log = { print($0) } }
                    if method.usesCSRec && teacherModule == nil {
                        teacherModule = try RobustnessTrainer.teachers(data: data, cfg: cfg)
                        if !quiet { print("csrec teachers p=\(level) seed=\(seed): \(String(format: "%.1f", teacherModule!.seconds)) s") }
                    }
                    let r = try RobustnessTrainer.run(method, data: data, corruption: level, noisy: flags, groups: groupsByPopularity, cfg: cfg,
                                                      teachers: method.usesCSRec ? teacherModule : nil)
                    runs.append(r)
                    try directory.append(r, to: "runs.jsonl")
                    print("\(method.rawValue) p=\(level) seed=\(seed): test ndcg@10 \(f4(r.test["ndcg@10"])) hr@10 \(f4(r.test["hr@10"])) "
                          + "mrr@10 \(f4(r.test["mrr@10"])) best epoch \(r.bestEpoch)/\(r.epochs) \(String(format: "%.1f", r.seconds)) s"
                          + (r.recogniserAUC.map { " recogniser AUC \(f4($0))" } ?? ""))
                }
            }
        }
        // the table covers this invocation's plan (the file may hold more seeds, levels or methods)
        runs = runs.filter { r in seedList.contains(r.seed) && levelList.contains(r.corruption) && methodList.contains { $0.rawValue == r.method } }
        let table = RobustnessReport.markdown(runs, levels: levelList, methods: methodList.map(\.rawValue), command: CommandLine.arguments.joined(separator: " "))
        try table.write(toFile: out + "/robustness.md", atomically: true, encoding: .utf8)
        for (metric, title) in [("ndcg@10", "NDCG@10"), ("hr@10", "HR@10")] {
            let series = RobustnessReport.series(runs, metric: metric, methods: methodList.map(\.rawValue), relative: false)
            try SVGPlot.lineChart(title: "Test \(title) vs corrupted training clicks", xLabel: "fraction of training clicks corrupted",
                                  yLabel: title, series: series).write(toFile: out + "/robustness-\(metric.replacingOccurrences(of: "@", with: ""))" + ".svg",
                                                                       atomically: true, encoding: .utf8)
        }
        let drop = RobustnessReport.series(runs, metric: "ndcg@10", methods: methodList.map(\.rawValue), relative: true)
        try SVGPlot.lineChart(title: "Relative NDCG@10 (corrupted / clean)", xLabel: "fraction of training clicks corrupted",
                              yLabel: "NDCG@10 ÷ clean NDCG@10", series: drop).write(toFile: out + "/robustness-relative.svg", atomically: true, encoding: .utf8)
        print(table)
        print("wrote \(runsPath), \(out)/robustness.md and SVG plots")
    }
}

private func f4(_ x: Double?) -> String { x.map { String(format: "%.4f", $0) } ?? "-" }

/// Tables and plot series from robustness runs.
enum RobustnessReport {
    static func meanStd(_ xs: [Double]) -> (Double, Double)? {
        guard !xs.isEmpty else { return nil }
        let m = xs.reduce(0, +) / Double(xs.count)
        let v = xs.count > 1 ? xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(xs.count - 1) : 0
        return (m, v.squareRoot())
    }

    static func cell(_ xs: [Double]) -> String {
        guard let (m, s) = meanStd(xs) else { return "-" }
        return xs.count > 1 ? String(format: "%.4f ± %.4f", m, s) : String(format: "%.4f", m)
    }

    static func series(_ runs: [RobustnessRun], metric: String, methods: [String], relative: Bool) -> [SVGPlot.Series] {
        methods.compactMap { m in
            let mine = runs.filter { $0.method == m }
            guard !mine.isEmpty else { return nil }
            let clean = meanStd(mine.filter { $0.corruption == 0 }.compactMap { $0.test[metric] })?.0
            let levels = Array(Set(mine.map(\.corruption))).sorted()
            let points: [(x: Double, y: Double)] = levels.compactMap { p in
                guard let (v, _) = meanStd(mine.filter { $0.corruption == p }.compactMap { $0.test[metric] }) else { return nil }
                if relative { guard let c = clean, c > 0 else { return nil }; return (p, v / c) }
                return (p, v)
            }
            return SVGPlot.Series(name: m == "base" ? "base" : m.uppercased().replacingOccurrences(of: "CSREC", with: "CSRec").replacingOccurrences(of: "UFNREC", with: "UFNRec"), points: points)
        }
    }

    static func markdown(_ runs: [RobustnessRun], levels: [Double], methods: [String], command: String) -> String {
        var s = "Command: `\(command)`\n\n"
        s += "| method | corrupted | NDCG@10 | HR@10 | MRR@10 | NDCG@10 drop vs clean | popular NDCG@10 | niche NDCG@10 | recogniser AUC | best epoch | time ÷ base |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|---|\n"
        for m in methods {
            let mine = runs.filter { $0.method == m }
            if mine.isEmpty { continue }
            let clean = meanStd(mine.filter { $0.corruption == 0 }.compactMap { $0.test["ndcg@10"] })?.0
            for p in levels {
                let at = mine.filter { $0.corruption == p }
                if at.isEmpty { continue }
                let ndcg = at.compactMap { $0.test["ndcg@10"] }
                let drop: String
                if let c = clean, c > 0, let (v, _) = meanStd(ndcg) { drop = String(format: "%+.1f %%", (v - c) / c * 100) } else { drop = "-" }
                let base = runs.filter { $0.method == "base" && $0.corruption == p }.map(\.seconds)
                let ratio = base.isEmpty ? "-" : String(format: "%.2f", at.map(\.seconds).reduce(0, +) / base.reduce(0, +) * Double(base.count) / Double(at.count))
                let auc = at.compactMap(\.recogniserAUC)
                s += "| \(m) | \(Int((p * 100).rounded())) % | \(cell(ndcg)) | \(cell(at.compactMap { $0.test["hr@10"] })) | "
                s += "\(cell(at.compactMap { $0.test["mrr@10"] })) | \(drop) | \(cell(at.compactMap { $0.popular["ndcg@10"] })) | "
                s += "\(cell(at.compactMap { $0.niche["ndcg@10"] })) | \(auc.isEmpty ? "-" : cell(auc)) | "
                let epochs = at.map { Double($0.bestEpoch) }
                s += "\(String(format: "%.1f", epochs.reduce(0, +) / Double(epochs.count))) | \(ratio) |\n"
            }
        }
        return s
    }
}
