// The training loop: seeded shuffled batches (windows or prefixes), one `TrainStep` each,
// validation after every epoch, early stopping on the selection metric with patience, the
// best-validation weights restored. It checkpoints after every epoch (a stopped run continues
// bit for bit), stops at the next step when cancelled, and reports structured progress that a
// CLI prints and a service sends.
import Foundation
import Numerics
import Models
import Data
import Evaluation

/// Validation or test metrics of a model (a closure, so any protocol plugs in).
public typealias ModelEvaluation = (Backbone) -> [String: Double]

/// One epoch's record.
public struct EpochLog: Codable, Sendable, Equatable {
    public var epoch: Int
    public var loss: Double
    /// The selection metric's validation value (0 without validation).
    public var valid: Double
    public var validNDCG10: Double
    public var validHR10: Double
    public var seconds: Double
    enum CodingKeys: String, CodingKey {
        case epoch, loss, seconds, valid
        case validNDCG10 = "valid_ndcg@10", validHR10 = "valid_hr@10"
    }
    public init(epoch: Int, loss: Double, valid: Double, validNDCG10: Double, validHR10: Double, seconds: Double) {
        self.epoch = epoch; self.loss = loss; self.valid = valid; self.validNDCG10 = validNDCG10
        self.validHR10 = validHR10; self.seconds = seconds
    }
    /// Logs written before `valid` existed selected on NDCG@10.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        epoch = try c.decode(Int.self, forKey: .epoch)
        loss = try c.decode(Double.self, forKey: .loss)
        validNDCG10 = try c.decode(Double.self, forKey: .validNDCG10)
        validHR10 = try c.decode(Double.self, forKey: .validHR10)
        seconds = try c.decode(Double.self, forKey: .seconds)
        valid = try c.decodeIfPresent(Double.self, forKey: .valid) ?? validNDCG10
    }
}

/// What the loop reports while it runs.
public struct TrainingProgress: Sendable {
    public enum Event: Sendable, Equatable {
        /// A checkpoint was loaded; training continues after `epoch`.
        case resumed
        /// A step finished (`loss` is the epoch's running mean).
        case step
        /// An epoch finished and was validated.
        case epoch
    }
    public var event: Event
    /// The stage of the job (e.g. "train", "pretrain", "teacher 2").
    public var stage: String
    public var epoch: Int
    public var maxEpochs: Int
    public var step: Int
    public var steps: Int
    public var loss: Double
    /// Validation metrics (after `.epoch`; empty otherwise).
    public var valid: [String: Double]
    /// Seconds since the stage started, over every process that worked on it.
    public var seconds: Double
    /// Epochs left before early stopping ends the stage without a gain.
    public var patienceLeft: Int
}

/// Asks a running loop to stop at its next step (thread-safe).
public final class Cancellation: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    public init() {}
    public func cancel() { lock.lock(); flag = true; lock.unlock() }
    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return flag }
}

/// What one call of `TrainingLoop.fit` did.
public struct FitResult: Sendable, Codable {
    public var epochs: Int
    public var bestEpoch: Int
    public var bestValid: [String: Double]
    /// Mean training loss per epoch.
    public var losses: [Double]
    public var seconds: Double
    public var scheme: TrainingScheme
    /// Training rows per epoch: windows or prefixes (0 when the caller trained its own epochs).
    public var rows: Int
    public var log: [EpochLog]
    enum CodingKeys: String, CodingKey {
        case epochs, losses, seconds, scheme, rows, log, bestEpoch = "best_epoch", bestValid = "best_valid"
    }
    public init(epochs: Int, bestEpoch: Int, bestValid: [String: Double], losses: [Double], seconds: Double,
                scheme: TrainingScheme, rows: Int, log: [EpochLog]) {
        self.epochs = epochs; self.bestEpoch = bestEpoch; self.bestValid = bestValid; self.losses = losses
        self.seconds = seconds; self.scheme = scheme; self.rows = rows; self.log = log
    }
    /// Results written before the scheme existed were prefix fits with no per-epoch log (a
    /// stopped sweep's directory reads them back).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        epochs = try c.decode(Int.self, forKey: .epochs)
        bestEpoch = try c.decode(Int.self, forKey: .bestEpoch)
        bestValid = try c.decode([String: Double].self, forKey: .bestValid)
        losses = try c.decode([Double].self, forKey: .losses)
        seconds = try c.decode(Double.self, forKey: .seconds)
        scheme = try c.decodeIfPresent(TrainingScheme.self, forKey: .scheme) ?? .prefixes
        rows = try c.decodeIfPresent(Int.self, forKey: .rows) ?? 0
        log = try c.decodeIfPresent([EpochLog].self, forKey: .log) ?? []
    }
}

/// The loop over a dataset's sequences; one instance serves any number of fits.
public final class TrainingLoop {
    public let data: SequenceDataset
    public let config: LoopConfig
    /// Receives progress events; nil for silence.
    public var progress: ((TrainingProgress) -> Void)?
    /// Checked before every step.
    public var cancellation: Cancellation?
    /// Named in progress events.
    public var stage = "train"

    public init(data: SequenceDataset, config: LoopConfig) {
        self.data = data; self.config = config
    }

    /// Trains `model` on `instances` with `loss` to early stop (or `maxEpochs`) and leaves the
    /// best-validation weights in it; with `validate` nil, trains exactly `maxEpochs` epochs and
    /// keeps the last weights. With a `checkpoint` path the state is saved there after every
    /// epoch, and an existing file is continued (one of another run is an error, and nothing is
    /// trained).
    @discardableResult
    public func fit(model: Backbone, instances: InstanceSet, loss: RowLoss, validate: ModelEvaluation?,
                    optimizer: Adam? = nil, checkpoint: String? = nil) throws -> FitResult {
        try config.validate()
        let start = Date()
        let B = config.batchSize, T = config.maxLength, scheme = config.scheme
        guard model.maxLength == T else {
            throw TrainingError.unsupported("\(model.name) reads \(model.maxLength) positions, the loop's max_length is \(T)")
        }
        let adam = optimizer ?? Adam(parameters: model.parameters, learningRate: config.learningRate, weightDecay: config.weightDecay)
        let step = try TrainStep(model: model, loss: loss, optimizer: adam, scheme: scheme, batchSize: B)
        var batcher: Batcher = scheme == .allPositions
            ? Batcher(data: data, windowsOf: instances, maxLength: T, batchSize: B, seed: config.seed)
            : Batcher(data: data, instances: instances, maxLength: T, batchSize: B, padding: .right, seed: config.seed)
        // this step's batch and the next, which the step announces to the loss (`RowLoss.prefetch`)
        var buffers = (BatchBuffers(B: B, T: T, perPosition: scheme == .allPositions),
                       BatchBuffers(B: B, T: T, perPosition: scheme == .allPositions))
        let best = model.parameters.clone()
        var state = LoopState(stopping: EarlyStopping(metric: config.selectMetric, patience: config.patience))
        let file = checkpoint.map { CheckpointFile(path: $0, loop: self, model: model, instances: instances, state: loss) }
        if let file, FileManager.default.fileExists(atPath: file.path) {
            var restored: Batcher? = batcher
            state = try file.load(into: adam, batcher: &restored, best: best)
            batcher = restored!
            report(.resumed, state: state, step: 0, steps: batcher.batchCount, loss: 0, valid: [:])
        }
        guard batcher.count > 0 else {
            return FitResult(epochs: 0, bestEpoch: 0, bestValid: validate?(model) ?? [:], losses: [], seconds: 0, scheme: scheme,
                             rows: 0, log: [])
        }
        let steps = batcher.batchCount
        return try epochs(model: model, evaluated: { loss.evaluatedModel ?? model }, validate: validate, state: state,
                          best: best, start: start, steps: steps, scheme: scheme, rows: batcher.count) { epoch, state in
            batcher.shuffle()
            loss.beginEpoch(epoch)
            var total = 0.0
            buffers.0.fill(batcher, batch: 0)
            for i in 0..<steps {
                if cancellation?.isCancelled == true { throw TrainingError.cancelled(epoch: epoch) }
                if i + 1 < steps { buffers.1.fill(batcher, batch: i + 1) }
                let b = buffers.0.filled
                total += try step.step(items: b.items, lengths: b.lengths, targets: b.targets, instances: b.instances, B: b.B,
                                       next: i + 1 < steps ? buffers.1.filled : nil)
                buffers = (buffers.1, buffers.0)
                if progress != nil {
                    report(.step, state: state, epoch: epoch, step: i + 1, steps: steps, loss: total / Double(i + 1), valid: [:], since: start)
                }
            }
            let mean = total / Double(steps)
            loss.endEpoch(epoch, meanLoss: mean)
            return mean
        } epochEnded: { state in
            try file?.save(state, seconds: state.secondsBefore + Date().timeIntervalSince(start), optimizer: adam, batcher: batcher, best: best)
        }
    }

    /// Early stopping over epochs that the caller trains itself, `epoch(e)` training epoch e
    /// (1-based) and returning its mean loss: for trainers that own their steps (DSS's two
    /// encodes per batch, ATJT's weigher between batch and loss). `evaluated` names the model to
    /// validate and keep when it is not `model` (UFNRec's EMA teacher after warm-up; it shares
    /// the model's architecture). Cancelled between epochs. With a `checkpoint`, the trainer's
    /// `optimizer` and `state` (its batch orders, generators, weighers) are saved there after
    /// every epoch with the weights and the loop's counters, and an existing file is continued.
    @discardableResult
    public func fit(model: Backbone, validate: @escaping ModelEvaluation, evaluated: (() -> Backbone)? = nil,
                    checkpoint: (path: String, optimizer: Adam, state: CheckpointedState, instances: InstanceSet)? = nil,
                    epoch: (Int) throws -> Double) throws -> FitResult {
        try config.validate()
        let start = Date(), best = model.parameters.clone()
        var state = LoopState(stopping: EarlyStopping(metric: config.selectMetric, patience: config.patience))
        let file = checkpoint.map { CheckpointFile(path: $0.path, loop: self, model: model, instances: $0.instances, state: $0.state) }
        if let file, let c = checkpoint, FileManager.default.fileExists(atPath: file.path) {
            var none: Batcher? = nil
            state = try file.load(into: c.optimizer, batcher: &none, best: best)
            report(.resumed, state: state, step: 0, steps: 0, loss: 0, valid: [:])
        }
        return try epochs(model: model, evaluated: evaluated ?? { model }, validate: validate, state: state,
                          best: best, start: start, steps: 0, scheme: config.scheme, rows: 0,
                          train: { e, _ in
                              // these trainers own their steps: a cancellation ends them between epochs
                              if cancellation?.isCancelled == true { throw TrainingError.cancelled(epoch: e) }
                              return try epoch(e)
                          }, epochEnded: { state in
                              guard let file, let c = checkpoint else { return }
                              try file.save(state, seconds: state.secondsBefore + Date().timeIntervalSince(start), optimizer: c.optimizer,
                                            batcher: nil, best: best)
                          })
    }

    /// The epochs both fits share: train, validate `evaluated()`, keep its weights in `best` on a
    /// gain, stop after `patience` epochs without one, report, then `epochEnded` (checkpoints);
    /// at the end the best weights go into `model`.
    private func epochs(model: Backbone, evaluated: () -> Backbone, validate: ModelEvaluation?, state initial: LoopState,
                        best: ParameterSet, start: Date, steps: Int, scheme: TrainingScheme, rows: Int,
                        train: (Int, LoopState) throws -> Double, epochEnded: (LoopState) throws -> Void) throws -> FitResult {
        var state = initial
        while !state.stopped && state.epoch < config.maxEpochs {
            let epoch = state.epoch + 1, t0 = Date()
            let mean = try train(epoch, state)
            state.epoch = epoch
            let judged = evaluated()
            let valid = validate?(judged) ?? [:]
            if validate != nil && valid[config.selectMetric] == nil {
                throw TrainingError.unsupported("select_metric \(config.selectMetric) is not among the validation metrics (\(valid.keys.sorted().joined(separator: ", ")))")
            }
            state.log.append(EpochLog(epoch: epoch, loss: mean, valid: valid[config.selectMetric] ?? 0,
                                      validNDCG10: valid["ndcg@10"] ?? 0, validHR10: valid["hr@10"] ?? 0,
                                      seconds: Date().timeIntervalSince(t0)))
            if validate != nil {
                switch state.stopping.update(epoch: epoch, metrics: valid) {
                case .improved: best.copyValues(from: judged.parameters); state.bestValid = valid
                case .wait: break
                case .stop: state.stopped = true
                }
            }
            report(.epoch, state: state, step: steps, steps: steps, loss: mean, valid: valid, since: start)
            try epochEnded(state)
        }
        let bestEpoch: Int
        if validate != nil {
            model.parameters.copyValues(from: best); bestEpoch = state.stopping.bestEpoch
        } else {
            bestEpoch = state.epoch
        }
        return FitResult(epochs: state.epoch, bestEpoch: bestEpoch, bestValid: state.bestValid, losses: state.log.map(\.loss),
                         seconds: state.secondsBefore + Date().timeIntervalSince(start), scheme: scheme, rows: rows, log: state.log)
    }

    private func report(_ event: TrainingProgress.Event, state: LoopState, epoch: Int? = nil, step: Int, steps: Int,
                        loss: Double, valid: [String: Double], since start: Date? = nil) {
        guard let progress else { return }
        let s = state.stopping
        progress(TrainingProgress(event: event, stage: stage, epoch: epoch ?? state.epoch, maxEpochs: config.maxEpochs,
                                  step: step, steps: steps, loss: loss, valid: valid,
                                  seconds: state.secondsBefore + (start.map { Date().timeIntervalSince($0) } ?? 0),
                                  patienceLeft: s.patience - s.epochsWithoutImprovement))
    }
}

/// The loop's state between epochs (what a checkpoint keeps besides weights and generators).
struct LoopState {
    var epoch = 0
    var stopped = false
    var stopping: EarlyStopping
    var bestValid: [String: Double] = [:]
    var secondsBefore = 0.0
    var log: [EpochLog] = []
}

extension TrainingProgress {
    /// One line for a terminal: the epoch's loss, validation metric and time.
    public var line: String {
        switch event {
        case .resumed: return "\(stage): continuing from a checkpoint after epoch \(epoch)"
        case .step: return String(format: "%@: epoch %d step %d/%d loss %.4f", stage, epoch, step, steps, loss)
        case .epoch:
            var s = String(format: "%@: epoch %d  loss %.4f", stage, epoch, loss)
            if let n = valid["ndcg@10"] { s += String(format: "  valid ndcg@10 %.4f", n) }
            if let h = valid["hr@10"] { s += String(format: "  hr@10 %.4f", h) }
            return s + String(format: "  %.1fs", seconds)
        }
    }
}
