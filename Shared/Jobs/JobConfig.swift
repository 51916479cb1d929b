// A training job: a backbone, a protocol, the loop's settings and any composable set of label
// methods with their hyper-parameters.
//
// Format: JSON — which is also valid YAML 1.2 (flow style), so a `.yaml` job file written in
// that subset is read unchanged; block-style YAML is not parsed (no YAML library is used).
//
//   {"backbone": "sasrec", "protocol": "loo", "loop": {"max_epochs": 200, "seed": 1},
//    "methods": {"wslrec": {"sources": ["br", "itemcf"]},
//                "csrec": {"teachers": "model", "beta": 0.5, "temperature": 3}}}
//
// Compositions: none (base), csrec, wslrec, ufnrec, wslrec + csrec (CSRec's soft labels in
// WSLRec's fine-tuning), ufnrec + csrec (CSRec's KL beside UFNRec's BCE). CSRec's student loss
// wraps whatever hard-label objective the other method uses. The auxiliary-task methods dss and
// atjt, alone or with csrec: JobConfigAuxiliary.swift. The refused compositions are stated once,
// in `MethodComposition`.
import Foundation
import Numerics
import Models
import Data
import Evaluation
import Training
import Methods

/// Which evaluation protocol a job follows.
public enum JobProtocol: String, Sendable, Codable, CaseIterable {
    /// Leave-one-out, full ranking (the ML-100K protocol).
    case loo
    /// WSLRec's user split 8:1:1, last 20 % as the ground-truth set.
    case userSplit = "user_split"
}

/// The methods a job composes: label methods, and at most one auxiliary-task method.
public struct JobMethods: Sendable, Codable, Equatable {
    public var wslrec: WSLRecConfig?
    public var csrec: CSRecConfig?
    public var ufnrec: UFNRecConfig?
    public var dss: DSSJobConfig?
    public var atjt: ATJTJobConfig?
    public init(wslrec: WSLRecConfig? = nil, csrec: CSRecConfig? = nil, ufnrec: UFNRecConfig? = nil,
                dss: DSSJobConfig? = nil, atjt: ATJTJobConfig? = nil) {
        self.wslrec = wslrec; self.csrec = csrec; self.ufnrec = ufnrec; self.dss = dss; self.atjt = atjt
    }
    /// The names of the methods, as commands and sweeps spell them; a composition joins them
    /// with "+" ("atjt+csrec-m"). "csrec" alone means "csrec-m".
    public static let names = ["base", "wslrec", "csrec-m", "csrec-d", "csrec-t", "ufnrec", "dss", "atjt"]

    /// The methods a name spells, each part with its defaults (`names`; parts in any order,
    /// case ignored). Throws naming an unknown part or a refused composition (`MethodComposition`).
    public init(parsing spelled: String) throws {
        self.init()
        let parts = spelled.lowercased().split(separator: "+", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        func bad(_ reason: String) -> JobConfigError { .invalid(key: "methods", reason: "'\(spelled)': \(reason)") }
        guard !parts.isEmpty, !parts.contains("") else { throw bad("empty method name") }
        if parts.contains("base") {
            guard parts.count == 1 else { throw bad("base composes with nothing") }
            return
        }
        for part in parts {
            switch part {
            case "wslrec": wslrec = WSLRecConfig()
            case "csrec", "csrec-m", "csrec-d", "csrec-t":
                guard csrec == nil else { throw bad("one CSRec teacher module per job") }
                var c = CSRecConfig()
                c.teachers = part == "csrec-d" ? .data : part == "csrec-t" ? .training : .model
                csrec = c
            case "ufnrec": ufnrec = UFNRecConfig()
            case "dss": dss = DSSJobConfig()
            case "atjt": atjt = ATJTJobConfig()
            default: throw bad("unknown method '\(part)' (known: \(Self.names.joined(separator: ", ")), joined by +)")
            }
        }
        try MethodComposition.check(self)
    }

    /// The keys a job file's "methods" may hold.
    static let keysInFiles = ["atjt", "csrec", "dss", "ufnrec", "wslrec"]

    /// The job keys of the methods present ("dss", "atjt", "wslrec", "csrec", "ufnrec").
    var keys: [String] {
        [("dss", dss != nil), ("atjt", atjt != nil), ("wslrec", wslrec != nil), ("csrec", csrec != nil), ("ufnrec", ufnrec != nil)]
            .filter(\.1).map(\.0)
    }

    /// "base", or the method names joined by "+".
    public var name: String {
        var parts: [String] = []
        if dss != nil { parts.append("DSS") }
        if atjt != nil { parts.append("ATJT") }
        if wslrec != nil { parts.append("WSLRec") }
        if let c = csrec { parts.append("CSRec-" + ["model": "M", "data": "D", "training": "T"][c.teachers.rawValue]!) }
        if ufnrec != nil { parts.append("UFNRec") }
        return parts.isEmpty ? "base" : parts.joined(separator: "+")
    }
}

/// One training job.
public struct JobConfig: Sendable, Codable, Equatable {
    public var backbone: ModelKind
    public var `protocol`: JobProtocol = .loo
    public var loop = LoopConfig()
    public var methods = JobMethods()
    /// Seed of the user split (user_split protocol).
    public var splitSeed: UInt64 = 0
    /// Backbone width and SASRec blocks instead of the protocol's 64 and 2 (smoke runs); nil:
    /// the protocol's.
    public var dim: Int? = nil
    public var blocks: Int? = nil

    public init(backbone: ModelKind) { self.backbone = backbone }

    enum CodingKeys: String, CodingKey { case backbone, `protocol`, loop, methods, splitSeed = "split_seed", dim, blocks }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        backbone = try c.decode(ModelKind.self, forKey: .backbone)
        `protocol` = try c.decodeIfPresent(JobProtocol.self, forKey: .protocol) ?? .loo
        loop = try c.decodeIfPresent(LoopConfig.self, forKey: .loop) ?? LoopConfig()
        methods = try c.decodeIfPresent(JobMethods.self, forKey: .methods) ?? JobMethods()
        splitSeed = try c.decodeIfPresent(UInt64.self, forKey: .splitSeed) ?? 0
        dim = try c.decodeIfPresent(Int.self, forKey: .dim)
        blocks = try c.decodeIfPresent(Int.self, forKey: .blocks)
    }

    /// The job's backbone for `itemCount` items, initialised from `seed` (the loop's by default).
    public func makeBackbone(itemCount: Int, seed: UInt64? = nil) -> Backbone {
        backbone.make(itemCount: itemCount, maxLength: loop.maxLength, seed: seed ?? loop.seed, dim: dim, blocks: blocks)
    }

    /// This job with `methods` and `seed`; sweeps build every fit so.
    public func with(_ methods: JobMethods, seed: UInt64) -> JobConfig {
        var job = self; job.methods = methods; job.loop.seed = seed
        return job
    }

    /// Parses a job from JSON bytes (flow-style YAML in the JSON subset). A key the job does not
    /// know (a misspelt setting, a method that does not exist) is an error naming it, not a
    /// default silently taken.
    public static func parse(_ bytes: Data, path: String = "<memory>") throws -> JobConfig {
        let job: JobConfig
        do { job = try JSONDecoder().decode(JobConfig.self, from: bytes) }
        catch let e as DecodingError { throw JobConfigError.unreadable(path: path, reason: describe(e)) }
        // every key given must be one the job reads: what it reads, it writes back
        if let given = try? JSONSerialization.jsonObject(with: bytes), let read = try? JSONSerialization.jsonObject(with: JSONEncoder().encode(job)),
           let unknown = unknownKey(given, read, at: "") {
            let known = unknown.known.isEmpty ? "" : " (known here: \(unknown.known.joined(separator: ", ")))"
            throw JobConfigError.invalid(key: unknown.key, reason: "unknown key\(known)")
        }
        try job.validate()
        return job
    }

    /// The first key of `given` (depth first, sorted) that `read` lacks, with the keys `read` has there.
    private static func unknownKey(_ given: Any, _ read: Any, at path: String) -> (key: String, known: [String])? {
        guard let g = given as? [String: Any], let r = read as? [String: Any] else { return nil }
        for key in g.keys.sorted() {
            let here = path.isEmpty ? key : path + "." + key
            guard let sub = r[key] else {
                let known = path == "methods" ? JobMethods.keysInFiles : r.keys.sorted()
                return (here, known)
            }
            if let found = unknownKey(g[key]!, sub, at: here) { return found }
        }
        return nil
    }

    public static func load(path: String) throws -> JobConfig {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw JobConfigError.unreadable(path: path, reason: "cannot read file")
        }
        return try parse(d, path: path)
    }

    /// Range and composition checks.
    public func validate() throws {
        do { try loop.validate() } catch { throw JobConfigError.invalid(key: "loop.\(error.key)", reason: error.reason) }
        try methods.wslrec?.validate()
        try methods.csrec?.validate()
        try methods.ufnrec?.validate()
        try methods.dss?.validate()
        try methods.atjt?.validate()
        if let d = dim, d < 1 { throw JobConfigError.invalid(key: "dim", reason: "must be at least 1, got \(d)") }
        if let b = blocks, b < 1 { throw JobConfigError.invalid(key: "blocks", reason: "must be at least 1, got \(b)") }
        try MethodComposition.check(methods)
        try MethodComposition.checkAuxiliary(self)
    }

    private static func describe(_ e: DecodingError) -> String {
        func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case .keyNotFound(let k, let ctx): return "missing key \(path(ctx.codingPath + [k]))"
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        case .dataCorrupted(let ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}

/// The outcome of a job, the one fit result every command writes: the protocol's run JSON
/// (`model`, `seed`, `epochs`, `best_epoch`, `valid`, `test`, `seconds`, `framework`, `threads`,
/// `scheme`, `batch`, `lr`, `history_masked`, `max_len`, `padding`, `data`, `log` — the keys the
/// PyTorch reference writes too) plus the method, its stages and the job.
public struct JobResult: Codable, Sendable {
    /// The backbone ("sasrec", "gru4rec"; results written before were its display name).
    public var model: String
    public var method: String
    public var seed: UInt64
    public var epochs: Int
    public var bestEpoch: Int
    public var valid: [String: Double]
    public var test: [String: Double]
    /// Wall time of the job, CSRec's teachers included; a job continued from checkpoints adds
    /// its final stage's time before the stop.
    public var seconds: Double
    public var `protocol`: String
    /// Seconds spent training CSRec teachers (included in `seconds`).
    public var teacherSeconds: Double
    /// Per stage: name → fit.
    public var stages: [String: FitResult]
    public var config: JobConfig
    /// user_split only: each test instance's top-50 list (for HDR, Eq. 11–12).
    public var testLists: [[Int32]]?
    // The run JSON's context (absent from results written before they were recorded).
    public var framework: String?
    public var threads: Int?
    /// The final stage's scheme.
    public var scheme: TrainingScheme?
    public var batch: Int?
    public var lr: Float?
    public var historyMasked: Bool?
    public var maxLen: Int?
    public var padding: String?
    /// users, items, interactions, train_instances, train_rows (rows per epoch of the final stage).
    public var data: [String: Int]?
    /// The final stage's epochs.
    public var log: [EpochLog]?
    enum CodingKeys: String, CodingKey {
        case model, method, seed, epochs, valid, test, seconds, `protocol`, stages, config
        case bestEpoch = "best_epoch", teacherSeconds = "teacher_seconds", testLists = "test_lists"
        case framework, threads, scheme, batch, lr, padding, data, log
        case historyMasked = "history_masked", maxLen = "max_len"
    }
}

/// Trained CSRec teacher modules kept across jobs that share them (a hyper-parameter grid over
/// β and τ reuses one module: those only change the student).
public final class TeacherCache {
    private var sources: [String: (source: ModelSoftLabelSource, seconds: Double)] = [:]
    public init() {}
    /// What identifies a teacher module: everything its training depends on.
    static func key(_ job: JobConfig, _ c: CSRecConfig) -> String {
        var k = "\(job.backbone.rawValue)|\(job.protocol.rawValue)|\(job.splitSeed)|\(c.teachers.rawValue)|m\(c.m)|p\(c.p)"
        if c.teachers == .training { k += "|a\(c.alpha)|r\(c.noiseRank)" }
        let l = job.loop
        return k + "|\(l.scheme.rawValue)|\(l.maxEpochs)|\(l.patience)|\(l.batchSize)|\(l.maxLength)|\(l.learningRate)|\(l.weightDecay)|\(l.seed)|\(l.selectMetric)"
    }
    private var sides: [String: (side: Backbone, seconds: Double)] = [:]
    func get(_ key: String) -> (source: ModelSoftLabelSource, seconds: Double)? { sources[key] }
    func put(_ key: String, _ value: (source: ModelSoftLabelSource, seconds: Double)) { sources[key] = value }
    /// CSRec-T's side teacher depends on neither α nor the noise rank: one per seed and p.
    static func sideKey(_ job: JobConfig, _ c: CSRecConfig) -> String {
        var plain = c; plain.alpha = 0; plain.noiseRank = 0
        return "side|" + key(job, plain)
    }
    func side(_ key: String) -> (side: Backbone, seconds: Double)? { sides[key] }
    func putSide(_ key: String, _ value: (side: Backbone, seconds: Double)) { sides[key] = value }
}

/// A job's trained parts, for callers that examine more than the result (the robustness suite
/// scores user groups and the recogniser).
public struct TrainedJob {
    public let result: JobResult
    /// The model validated and tested (best weights).
    public let model: Backbone
    /// ATJT's recognisers, when the job names atjt.
    public let recogniser: ATJTWeigher?
}

/// Runs a job in this process.
public enum JobRunner {
    /// Runs `job`; CSRec teachers come from `cache` when it holds them (their training time is
    /// still reported in `teacher_seconds`, as measured when they were built).
    public static func run(_ job: JobConfig, data: SequenceDataset, cache: TeacherCache? = nil,
                           progress: ((String) -> Void)? = nil, control: JobControl = JobControl(),
                           teachers: TeacherProvider? = nil, recognisers: RecogniserProvider? = nil) throws -> JobResult {
        try train(job, data: data, cache: cache, progress: progress, control: control, teachers: teachers, recognisers: recognisers).result
    }

    /// `run`, returning the trained model and recognisers beside the result. `control` receives
    /// every stage's progress events, can cancel the job, and names where its stages checkpoint.
    public static func train(_ job: JobConfig, data: SequenceDataset, cache: TeacherCache? = nil,
                             progress: ((String) -> Void)? = nil, control: JobControl = JobControl(),
                             teachers: TeacherProvider? = nil, recognisers: RecogniserProvider? = nil) throws -> TrainedJob {
        try job.validate()
        let T = job.loop.maxLength, seed = job.loop.seed
        let loop = LabelLoop(data: data, config: job.loop)
        loop.progress = progress
        loop.control = control
        let split = JobSplit(job, data: data)
        let train = split.train, trainEnds = split.trainEnds, trainUsers = split.trainUsers
        let validate = split.validate, test = split.test
        var stages: [String: FitResult] = [:]
        // Teachers first (CSRec): from the provider (teacher processes), else trained here.
        var source: SoftLabelSource? = nil
        var teacherSeconds = 0.0
        if let c = job.methods.csrec, let teachers {
            progress?("CSRec: \(c.teachers.rawValue)-level teachers from the teacher processes")
            let t0 = Date()
            source = try teachers.source(for: job, data: data)
            teacherSeconds = Date().timeIntervalSince(t0)
        } else if let c = job.methods.csrec {
            let key = TeacherCache.key(job, c)
            if let hit = cache?.get(key) {
                source = hit.source; teacherSeconds = hit.seconds
            } else {
                progress?("CSRec: training \(c.teachers.rawValue)-level teachers")
                let sideKey = TeacherCache.sideKey(job, c)
                let side = c.teachers == .training ? cache?.side(sideKey) : nil
                let t0 = Date()
                let N = data.itemCount
                let built = try CSRecTeachers.module(c, make: { job.makeBackbone(itemCount: N, seed: $0) }, loop: loop,
                                                     instances: train, validate: validate, seed: seed, side: side?.side)
                // a reused side teacher is still charged at the time it took to train
                teacherSeconds = Date().timeIntervalSince(t0) + (side?.seconds ?? 0)
                if side == nil, let g2 = built.side { cache?.putSide(sideKey, (g2, built.sideSeconds)) }
                cache?.put(key, (built.source, teacherSeconds))
                source = built.source
            }
        }
        let studentStart = Date()
        var finalStart = Date()   // when the final stage's fit began (reset below)
        func student(_ hard: LabelObjective) -> LabelObjective {
            guard let c = job.methods.csrec, let source else { return hard }
            return CSRecStudentObjective(source: source, hard: hard, beta: c.beta, temperature: c.temperature,
                                         direction: c.direction.direction)
        }
        let model: Backbone
        let final: FitResult
        var recogniser: ATJTWeigher? = nil
        if job.methods.dss != nil || job.methods.atjt != nil {
            finalStart = Date()
            let trained = try AuxiliaryJob.train(job, data: data, instances: train, source: source, validate: validate, progress: progress,
                                                 control: control, recognisers: recognisers)
            model = trained.model; final = trained.fit; recogniser = trained.recogniser
        } else if let w = job.methods.wslrec, let teachers {
            // stages 1 and 2 in a teacher process; stage 3 here, from the model it pre-trained
            progress?("WSLRec: stages 1 and 2 in a teacher process")
            let pre = try teachers.pretrained(for: job, data: data, instances: train, k: min(w.miningK, data.itemCount))
            model = pre.model
            finalStart = Date()
            final = try WSLRec.fineTune(model, loop: loop, instances: train, mined: pre.mined, trainEnds: trainEnds, validate: validate,
                                        objective: student)
        } else if let w = job.methods.wslrec {
            model = job.makeBackbone(itemCount: data.itemCount)
            let r = try WSLRec.train(w, model: model, loop: loop, instances: train, trainEnds: trainEnds, trainUsers: trainUsers,
                                     validate: validate, fineTune: student)
            stages["pretrain"] = r.pre
            final = r.fine
        } else if let u = job.methods.ufnrec {
            model = job.makeBackbone(itemCount: data.itemCount)
            let teacher = job.makeBackbone(itemCount: data.itemCount)
            // after warm-up the EMA teacher is what the loop validates, keeps and leaves in `model`
            let objective = UFNRecObjective(config: u, student: model, teacher: teacher, seed: seed,
                                            history: TrainingSequences(data: data, instances: train))
            finalStart = Date()
            final = try loop.fit(model: model, instances: train, objective: student(objective), validate: validate)
        } else if job.methods.csrec != nil {
            model = job.makeBackbone(itemCount: data.itemCount)
            finalStart = Date()
            final = try loop.fit(model: model, instances: train, objective: student(CrossEntropyObjective()), validate: validate)
        } else {
            // base: the fused cross-entropy, under either scheme
            model = job.makeBackbone(itemCount: data.itemCount)
            finalStart = Date()
            final = try loop.fit(model: model, instances: train, loss: CrossEntropyLoss(seed: seed), validate: validate)
        }
        stages["final"] = final
        let valid = validate(model), testMetrics = test(model)
        var lists: [[Int32]]? = nil
        if job.protocol == .userSplit {
            lists = try LabelEvaluation.topLists(model, data: data, instances: UserSplit(data, seed: job.splitSeed).test,
                                                 k: min(50, data.itemCount), maxLength: T)
        }
        // the final stage's time before a stop it continued from (its fit counts it, this call did not see it)
        let before = max(0, final.seconds - Date().timeIntervalSince(finalStart))
        let result = JobResult(model: job.backbone.rawValue, method: job.methods.name, seed: seed, epochs: final.epochs,
                               bestEpoch: final.bestEpoch, valid: valid, test: testMetrics,
                               seconds: teacherSeconds + Date().timeIntervalSince(studentStart) + (final.log.isEmpty ? 0 : before),
                               protocol: job.protocol.rawValue, teacherSeconds: teacherSeconds, stages: stages, config: job,
                               testLists: lists, framework: "winnow", threads: Threads.count, scheme: final.scheme,
                               batch: job.loop.batchSize, lr: job.loop.learningRate, historyMasked: false, maxLen: T, padding: "right",
                               data: ["users": data.userCount, "items": data.itemCount, "interactions": data.interactionCount,
                                      "train_instances": train.count, "train_rows": final.rows],
                               log: final.log)
        return TrainedJob(result: result, model: model, recogniser: recogniser)
    }
}

/// A job's data under its protocol: the training instances, the validation and test
/// evaluations, and where each user's training data ends.
public struct JobSplit {
    public let train: InstanceSet
    /// The end (exclusive) of each user's training part of their sequence.
    public let trainEnds: [Int]
    /// The users that train (user split); nil when every user does (leave-one-out).
    public let trainUsers: [Int32]?
    public let validate: ModelEvaluation
    public let test: ModelEvaluation

    public init(_ job: JobConfig, data: SequenceDataset) {
        let T = job.loop.maxLength
        switch job.protocol {
        case .loo:
            let s = LeaveOneOut(data)
            train = s.train; trainEnds = WSLRec.leaveOneOutTrainEnds(data); trainUsers = nil
            validate = { LabelEvaluation.fullRanking($0, data: data, instances: s.validation, maxLength: T) }
            test = { LabelEvaluation.fullRanking($0, data: data, instances: s.test, maxLength: T) }
        case .userSplit:
            let s = UserSplit(data, seed: job.splitSeed)
            train = s.train; trainUsers = s.trainUsers
            var ends = [Int](repeating: 0, count: data.userCount)
            for u in s.trainUsers { ends[Int(u)] = data.length(Int(u)) }
            trainEnds = ends
            validate = { LabelEvaluation.sets($0, data: data, instances: s.validation, maxLength: T) }
            test = { LabelEvaluation.sets($0, data: data, instances: s.test, maxLength: T) }
        }
    }
}

/// Where a job's teachers come from when they are not trained in the job's own process: the
/// trainer's teacher processes. Each answers as the in-process part would.
public protocol TeacherProvider: AnyObject {
    /// CSRec's soft-label source.
    func source(for job: JobConfig, data: SequenceDataset) throws -> SoftLabelSource
    /// WSLRec's stages 1 and 2: the pre-trained model (weights and dropout generator, for
    /// stage 3 to go on from) and its top-`k` list of every training instance, in order.
    func pretrained(for job: JobConfig, data: SequenceDataset, instances: InstanceSet, k: Int) throws -> (model: Backbone, mined: [[Int32]])
}

/// A member of a job's teachers, one vocabulary for every method that has them: one of CSRec's
/// teacher module, or WSLRec's pre-trained model (its stage 1, which stage 2 mines).
public enum TeacherMember: Hashable, Sendable, CustomStringConvertible {
    case csrec(CSRecMember)
    case pretrained

    /// "m0", …, "side", "main", "pretrain": the member's part of its teacher name.
    public var description: String {
        switch self {
        case .csrec(let m): return m.description
        case .pretrained: return "pretrain"
        }
    }

    /// The member a name spells, nil for none.
    public init?(name: String) {
        if name == "pretrain" { self = .pretrained; return }
        guard let m = CSRecMember(name: name) else { return nil }
        self = .csrec(m)
    }
}

/// The teacher members of a job and how one of them trains, wherever it runs: a teacher process
/// trains a member with exactly the data, seed, loop and checks the job's own process would.
public enum TeacherPlan {
    /// The members of the job's teachers, in training order (none without CSRec or WSLRec).
    public static func members(_ job: JobConfig) -> [TeacherMember] {
        (job.methods.wslrec != nil ? [.pretrained] : []) + (job.methods.csrec.map(CSRecMember.plan) ?? []).map { .csrec($0) }
    }

    /// Trains `member` of `job`'s teachers on `data`; `side` is CSRec-T's trained side teacher
    /// when the member is the main one.
    public static func train(_ member: TeacherMember, of job: JobConfig, data: SequenceDataset, side: Backbone? = nil,
                             control: JobControl = JobControl(), progress: ((String) -> Void)? = nil) throws -> Backbone {
        try job.validate()
        guard members(job).contains(member) else {
            let names = members(job).map(\.description)
            throw JobConfigError.invalid(key: "member", reason: "'\(member)' is not a teacher of \(job.methods.name)"
                                         + (names.isEmpty ? " (it has none)" : " (\(names.joined(separator: ", ")))"))
        }
        let loop = LabelLoop(data: data, config: job.loop)
        loop.progress = progress
        loop.control = control
        let split = JobSplit(job, data: data), N = data.itemCount
        switch member {
        case .pretrained:
            // the model the job's own process pre-trains: the job's seed, stage 1 as it runs there
            let model = job.makeBackbone(itemCount: N)
            try WSLRec.pretrain(job.methods.wslrec!, model: model, loop: loop, instances: split.train, trainEnds: split.trainEnds,
                                trainUsers: split.trainUsers, validate: split.validate)
            return model
        case .csrec(let m):
            return try CSRecTeachers.train(m, job.methods.csrec!, make: { job.makeBackbone(itemCount: N, seed: $0) }, loop: loop,
                                           instances: split.train, validate: split.validate, seed: job.loop.seed, side: side)
        }
    }
}
