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
    public var log: [EpochLog]
    enum CodingKeys: String, CodingKey {
        case epochs, losses, seconds, scheme, log, bestEpoch = "best_epoch", bestValid = "best_valid"
    }
    public init(epochs: Int, bestEpoch: Int, bestValid: [String: Double], losses: [Double], seconds: Double,
                scheme: TrainingScheme, log: [EpochLog]) {
        self.epochs = epochs; self.bestEpoch = bestEpoch; self.bestValid = bestValid; self.losses = losses
        self.seconds = seconds; self.scheme = scheme; self.log = log
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
        var batcher = scheme == .allPositions
            ? Batcher(data: data, windowsOf: instances, maxLength: T, batchSize: B, seed: config.seed)
            : Batcher(data: data, instances: instances, maxLength: T, batchSize: B, padding: .right, seed: config.seed)
        let targetWidth = scheme == .allPositions ? B * T : B
        var items = [Int32](repeating: 0, count: B * T), lengths = [Int32](repeating: 0, count: B)
        var targets = [Int32](repeating: 0, count: targetWidth), rows = [Int32](repeating: 0, count: targetWidth)
        let best = model.parameters.clone()
        var state = LoopState(stopping: EarlyStopping(metric: config.selectMetric, patience: config.patience))
        let file = checkpoint.map { CheckpointFile(path: $0, loop: self, model: model, instances: instances, loss: loss) }
        if let file, FileManager.default.fileExists(atPath: file.path) {
            state = try file.load(into: step, batcher: &batcher, best: best)
            report(.resumed, state: state, step: 0, steps: batcher.batchCount, loss: 0, valid: [:])
        }
        guard batcher.count > 0 else {
            return FitResult(epochs: 0, bestEpoch: 0, bestValid: validate?(model) ?? [:], losses: [], seconds: 0, scheme: scheme, log: [])
        }
        while !state.stopped && state.epoch < config.maxEpochs {
            let epoch = state.epoch + 1, t0 = Date()
            batcher.shuffle()
            loss.beginEpoch(epoch)
            var total = 0.0
            for i in 0..<batcher.batchCount {
                if cancellation?.isCancelled == true { throw TrainingError.cancelled(epoch: epoch) }
                let n = scheme == .allPositions
                    ? batcher.fillWindows(batch: i, items: &items, lengths: &lengths, targets: &targets, instances: &rows)
                    : batcher.fill(batch: i, items: &items, lengths: &lengths, targets: &targets, instances: &rows)
                total += try step.step(items: items, lengths: lengths, targets: targets, instances: rows, B: n)
                if progress != nil {
                    report(.step, state: state, epoch: epoch, step: i + 1, steps: batcher.batchCount,
                           loss: total / Double(i + 1), valid: [:], since: start)
                }
            }
            let mean = total / Double(batcher.batchCount)
            loss.endEpoch(epoch, meanLoss: mean)
            state.epoch = epoch
            let valid = validate?(model) ?? [:]
            state.log.append(EpochLog(epoch: epoch, loss: mean, valid: valid[config.selectMetric] ?? 0,
                                      validNDCG10: valid["ndcg@10"] ?? 0, validHR10: valid["hr@10"] ?? 0,
                                      seconds: Date().timeIntervalSince(t0)))
            if validate != nil {
                switch state.stopping.update(epoch: epoch, metrics: valid) {
                case .improved: best.copyValues(from: model.parameters); state.bestValid = valid
                case .wait: break
                case .stop: state.stopped = true
                }
            }
            report(.epoch, state: state, step: batcher.batchCount, steps: batcher.batchCount, loss: mean, valid: valid, since: start)
            try file?.save(state, seconds: state.secondsBefore + Date().timeIntervalSince(start), step: step,
                           batcher: batcher, best: best)
        }
        let bestEpoch: Int
        if validate != nil {
            model.parameters.copyValues(from: best); bestEpoch = state.stopping.bestEpoch
        } else {
            bestEpoch = state.epoch
        }
        return FitResult(epochs: state.epoch, bestEpoch: bestEpoch, bestValid: state.bestValid, losses: state.log.map(\.loss),
                         seconds: state.secondsBefore + Date().timeIntervalSince(start), scheme: scheme, log: state.log)
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
