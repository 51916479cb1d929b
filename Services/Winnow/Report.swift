import ArgumentParser
import Foundation
import Methods
import Jobs

/// `winnow report`: a job's result JSON (as `winnow train --json`, `winnow job submit --watch
/// --json` or `winnow experiment job` write it) as a short Markdown report with its training
/// curves as SVG.
struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a Markdown report and SVG training curves from a result JSON.")

    @Argument(help: "The result JSON.") var result: String
    @Option(help: "Output directory.") var out: String

    func run() throws {
        guard let bytes = FileManager.default.contents(atPath: result) else { throw ValidationError("\(result): cannot read") }
        let r: JobResult
        do { r = try JSONDecoder().decode(JobResult.self, from: bytes) } catch { throw ValidationError("\(result): not a result JSON (\(error))") }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let log = r.log ?? r.stages["final"]?.log ?? []
        let keys = ["ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "mrr@20"]
        var md = "# \(r.method) on \(r.model), seed \(r.seed)\n\n"
        md += "Protocol \(r.protocol)" + (r.scheme.map { ", \($0.rawValue)" } ?? "") + "; \(r.epochs) epochs, best \(r.bestEpoch); "
        md += String(format: "%.1f s", r.seconds) + (r.threads.map { " on \($0) thread(s)" } ?? "") + ".\n\n"
        md += "| split | " + keys.joined(separator: " | ") + " |\n|---|" + keys.map { _ in "---|" }.joined() + "\n"
        for (name, m) in [("validation", r.valid), ("test", r.test)] {
            md += "| \(name) | " + keys.map { m[$0].map { String(format: "%.4f", $0) } ?? "-" }.joined(separator: " | ") + " |\n"
        }
        md += "\n![training loss](loss.svg)\n\n![validation NDCG@10](valid.svg)\n"
        try md.write(toFile: out + "/report.md", atomically: true, encoding: .utf8)
        let loss = SVGPlot.Series(name: "training loss", points: log.map { (Double($0.epoch), $0.loss) })
        let valid = SVGPlot.Series(name: "valid NDCG@10", points: log.map { (Double($0.epoch), $0.validNDCG10) })
        try SVGPlot.lineChart(title: "Training loss per epoch", xLabel: "epoch", yLabel: "loss", series: [loss])
            .write(toFile: out + "/loss.svg", atomically: true, encoding: .utf8)
        try SVGPlot.lineChart(title: "Validation NDCG@10 per epoch", xLabel: "epoch", yLabel: "NDCG@10", series: [valid])
            .write(toFile: out + "/valid.svg", atomically: true, encoding: .utf8)
        print("wrote \(out)/report.md, loss.svg and valid.svg")
    }
}
