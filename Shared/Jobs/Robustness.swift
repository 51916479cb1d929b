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
import Methods

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

/// What one robustness fit produced.
public struct RobustnessRun: Sendable, Codable {
    /// The method as the sweep names it ("atjt+csrec").
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

public enum RobustnessSuite {
    /// Trains `job` on `data` (a corrupted copy) with the one job runner, and scores its model on
    /// the test users' popular / niche `groups` and, with ATJT, its recognisers on the training
    /// sequences whose target `noisy` flags. CSRec's teachers come from (or go to) `cache`, one
    /// per corrupted copy, so that the methods of a copy share them; their time is charged to
    /// each run that uses them.
    public static func run(_ job: JobConfig, name: String, data: SequenceDataset, corruption: Double, noisy: [Bool],
                           groups: (popular: InstanceSet, niche: InstanceSet), cache: TeacherCache,
                           progress: ((String) -> Void)? = nil) throws -> RobustnessRun {
        let trained = try JobRunner.train(job, data: data, cache: cache, progress: progress)
        let r = trained.result, T = job.loop.maxLength
        let popular = LabelEvaluation.fullRanking(trained.model, data: data, instances: groups.popular, maxLength: T)
        let niche = LabelEvaluation.fullRanking(trained.model, data: data, instances: groups.niche, maxLength: T)
        var auc: Double? = nil
        if let weigher = trained.recogniser, noisy.contains(true) {
            let split = LeaveOneOut(data)
            let all = (0..<split.train.count).map { Int32($0) }
            let w = weigher.evaluate(ids: all)
            let clean = all.map { k -> Bool in
                let u = Int(split.train.users[Int(k)])
                return !noisy[data.offsets[u] + Int(split.train.positions[Int(k)])]
            }
            auc = binaryAUC(scores: w, positive: clean)
        }
        return RobustnessRun(method: name, model: r.model, corruption: corruption, seed: r.config.loop.seed, epochs: r.epochs,
                             bestEpoch: r.bestEpoch, seconds: r.seconds, valid: r.valid, test: r.test, popular: popular, niche: niche,
                             recogniserAUC: auc, teacherSeconds: job.methods.csrec != nil ? r.teacherSeconds : nil)
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
