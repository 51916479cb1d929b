import ArgumentParser
import Foundation
import Numerics
import Data
import Models
import Training
import Methods
import Jobs

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
    @Option(help: "Methods, comma-separated; a composition joins names with +: base, wslrec, csrec (its teachers from --teachers), csrec-m, csrec-d, csrec-t, ufnrec, dss, atjt.")
    var methods: String = "base,dss,atjt"
    @Option(help: "Backbone: sasrec or gru4rec (DSS always uses its SASRec encoder).") var model: String = "sasrec"
    @Option(help: "Seeds, comma-separated.") var seeds: String = "1"
    @Option(help: "Maximum epochs.") var epochs: Int = 200
    @Option(help: "Early-stopping patience in epochs.") var patience: Int = 10
    @Option(help: "How targets reach the models: all_positions or prefixes.")
    var scheme = TrainingScheme.allPositions
    @Option(name: .customLong("batch-size"), help: "Rows per batch, windows or prefixes (default: 128 windows, 256 prefixes).") var batchSize: Int?
    @Option(name: .customLong("max-length"), help: "Input length T.") var maxLength: Int = 50
    @Option(help: "Adam learning rate.") var lr: Float = 1e-3
    @Option(help: "Embedding size (default: the protocol's 64).") var dim: Int?
    @Option(help: "SASRec blocks (default: the protocol's 2).") var blocks: Int?
    @Option(help: "DSS: intentions K.") var interests: Int = 4
    @Option(help: "DSS: λ, fraction of seq2seq terms kept.") var lambda: Float = 0.5
    @Option(help: "ATJT: weight α of the recogniser loss.") var alpha: Float = 10
    @Option(help: "ATJT: number of groups N.") var groups: Int = 2
    @Option(name: .customLong("recogniser-lr"), help: "ATJT: Adagrad learning rate of the recogniser.") var recogniserLR: Float = 0.01
    @Option(help: "CSRec (csrec): teacher module, model, data or training.") var teachers: String = "model"
    @Option(help: "CSRec: weight β of the soft-label KL.") var beta: Float = 0.5
    @Option(help: "CSRec: soft-label temperature τ.") var temperature: Float = 1
    @Option(name: .customLong("ufnrec-negatives"), help: "UFNRec: negatives n per positive.") var ufnrecNegatives: Int = 100
    @Option(name: .customLong("ufnrec-m"), help: "UFNRec: reversal threshold m.") var ufnrecM: Int = 5
    @Option(name: .customLong("ufnrec-alpha"), help: "UFNRec: weight α of the consistency loss.") var ufnrecAlpha: Float = 0.3
    @Option(name: .customLong("ufnrec-decay"), help: "UFNRec: EMA decay d of the teacher.") var ufnrecDecay: Float = 0.999
    @Option(help: "Threads for BLAS and parallel loops.") var threads: Int = 1
    @Option(help: "Output directory.") var out: String
    @Flag(help: "Print only the summary.") var quiet = false

    var levelList: [Double] { levels.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) } }
    var methodNames: [String] { methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty } }
    var seedList: [UInt64] { seeds.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) } }

    /// The methods a name spells, with this command's settings for each part.
    func jobMethods(_ name: String) throws -> JobMethods {
        var m = try JobMethods(parsing: name)
        if m.dss != nil { var d = DSSJobConfig(); d.interests = interests; d.lambda = lambda; m.dss = d }
        if m.atjt != nil {
            var a = ATJTJobConfig(); a.alpha = alpha; a.groups = groups; a.recogniserLearningRate = recogniserLR; m.atjt = a
        }
        if var c = m.csrec {
            // "csrec" takes --teachers; "csrec-m/d/t" name their module
            if !name.split(separator: "+").contains(where: { $0.hasPrefix("csrec-") }) { c.teachers = CSRecTeacherKind(rawValue: teachers) ?? .model }
            c.beta = beta; c.temperature = temperature; m.csrec = c
        }
        if m.ufnrec != nil {
            var u = UFNRecConfig(); u.negatives = ufnrecNegatives; u.m = ufnrecM; u.alpha = ufnrecAlpha; u.decay = ufnrecDecay
            m.ufnrec = u
        }
        return m
    }

    /// The settings every fit shares (backbone, protocol, loop); methods and seed come per fit.
    var template: JobConfig {
        var job = JobConfig(backbone: ModelKind(rawValue: model) ?? .sasrec)
        job.loop.maxEpochs = epochs; job.loop.patience = patience; job.loop.maxLength = maxLength
        job.loop.learningRate = lr; job.loop.selectMetric = "ndcg@10"
        job.loop.scheme = scheme; job.loop.batchSize = batchSize ?? LoopConfig.defaultBatchSize(scheme)
        job.dim = dim; job.blocks = blocks
        return job
    }

    func validate() throws {
        guard (dataset == nil) != (synthetic == nil) else { throw ValidationError("give exactly one of --dataset and --synthetic") }
        if let s = synthetic, s.split(separator: ",").compactMap({ Int($0) }).count != 3 {
            throw ValidationError("--synthetic wants USERS,ITEMS,INTERACTIONS, got '\(s)'")
        }
        let l = levels.split(separator: ",")
        guard !l.isEmpty, levelList.count == l.count, levelList.allSatisfy({ $0 >= 0 && $0 <= 1 }) else {
            throw ValidationError("--levels must be fractions in 0...1, got '\(levels)'")
        }
        guard !methodNames.isEmpty else { throw ValidationError("--methods: name at least one method") }
        guard CSRecTeacherKind(rawValue: teachers) != nil else { throw ValidationError("--teachers must be model, data or training, got '\(teachers)'") }
        guard ModelKind(rawValue: model) != nil else { throw ValidationError("--model must be sasrec or gru4rec, got '\(model)'") }
        guard !seedList.isEmpty, seedList.count == seeds.split(separator: ",").count else { throw ValidationError("--seeds must be integers, got '\(seeds)'") }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
        // every fit's job checked as the runner will check it (ranges, compositions)
        for name in methodNames {
            do {
                let m = try jobMethods(name)
                if m.dss != nil && template.backbone != .sasrec { continue }   // skipped at run time, said so
                try template.with(m, seed: seedList.first ?? 1).validate()
            } catch { throw ValidationError("--methods \(name): \(error)") }
        }
    }

    func loadData() throws -> SequenceDataset {
        if let path = dataset {
            let interactions = try InterReader().read(path: try Train.resolve(path))
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
            "scheme": scheme.rawValue, "batch_size": "\(template.loop.batchSize)", "max_length": "\(maxLength)", "lr": "\(lr)",
            "dim": dim.map(String.init) ?? "protocol",
            "blocks": blocks.map(String.init) ?? "protocol", "interests": "\(interests)", "lambda": "\(lambda)", "alpha": "\(alpha)",
            "groups": "\(groups)", "recogniser_lr": "\(recogniserLR)", "teachers": teachers, "beta": "\(beta)",
            "temperature": "\(temperature)"]
        settings["ufnrec"] = "n \(ufnrecNegatives) m \(ufnrecM) alpha \(ufnrecAlpha) decay \(ufnrecDecay)"
        let directory: ExperimentDirectory
        do { directory = try ExperimentDirectory(path: out, settings: settings) } catch { throw ValidationError("\(error)") }
        var runs = try directory.records("runs.jsonl", as: RobustnessRun.self)
        if !runs.isEmpty && !quiet { print("\(runsPath): \(runs.count) runs from before; those fits are not trained again") }
        for seed in seedList {
            for level in levelList {
                let (data, flags) = RobustnessData.corruptTrainingClicks(clean, fraction: level, seed: seed)
                let teachersOfCopy = TeacherCache()   // CSRec's, trained once for this corrupted copy
                for name in methodNames {
                    let methods = try jobMethods(name)
                    if methods.dss != nil && template.backbone != .sasrec {
                        if !quiet { print("\(name): skipped for \(model) (DSS's encoder is SASRec)") }
                        continue
                    }
                    if runs.contains(where: { $0.method == name && $0.corruption == level && $0.seed == seed }) { continue }
                    let job = template.with(methods, seed: seed)
                    let r = try RobustnessSuite.run(job, name: name, data: data, corruption: level, noisy: flags, groups: groupsByPopularity,
                                                    cache: teachersOfCopy,
                                                    progress: quiet ? nil : { print("\(name) p=\(level) seed=\(seed) \($0)") })
                    runs.append(r)
                    try directory.append(r, to: "runs.jsonl")
                    print("\(name) p=\(level) seed=\(seed): test ndcg@10 \(f4(r.test["ndcg@10"])) hr@10 \(f4(r.test["hr@10"])) "
                          + "mrr@10 \(f4(r.test["mrr@10"])) best epoch \(r.bestEpoch)/\(r.epochs) \(String(format: "%.1f", r.seconds)) s"
                          + (r.recogniserAUC.map { " recogniser AUC \(f4($0))" } ?? ""))
                }
            }
        }
        // the table covers this invocation's plan (the file may hold more seeds, levels or methods)
        runs = runs.filter { r in seedList.contains(r.seed) && levelList.contains(r.corruption) && methodNames.contains(r.method) }
        let table = RobustnessReport.markdown(runs, levels: levelList, methods: methodNames, command: CommandLine.arguments.joined(separator: " "))
        try table.write(toFile: out + "/robustness.md", atomically: true, encoding: .utf8)
        for (metric, title) in [("ndcg@10", "NDCG@10"), ("hr@10", "HR@10")] {
            let series = RobustnessReport.series(runs, metric: metric, methods: methodNames, relative: false)
            try SVGPlot.lineChart(title: "Test \(title) vs corrupted training clicks", xLabel: "fraction of training clicks corrupted",
                                  yLabel: title, series: series).write(toFile: out + "/robustness-\(metric.replacingOccurrences(of: "@", with: ""))" + ".svg",
                                                                       atomically: true, encoding: .utf8)
        }
        let drop = RobustnessReport.series(runs, metric: "ndcg@10", methods: methodNames, relative: true)
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
            return SVGPlot.Series(name: (try? JobMethods(parsing: m).name) ?? m, points: points)
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
