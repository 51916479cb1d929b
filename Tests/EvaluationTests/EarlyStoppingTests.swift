import XCTest
@testable import Evaluation

final class EarlyStoppingTests: XCTestCase {
    func testStopsAfterPatienceEpochsWithoutStrictImprovement() {
        var es = EarlyStopping(metric: "ndcg@10", patience: 3)
        XCTAssertEqual(es.update(epoch: 1, metrics: ["ndcg@10": 0.10]), .improved)
        XCTAssertEqual(es.update(epoch: 2, metrics: ["ndcg@10": 0.12]), .improved)
        XCTAssertEqual(es.update(epoch: 3, metrics: ["ndcg@10": 0.12]), .wait(remaining: 2))   // equal is not better
        XCTAssertEqual(es.update(epoch: 4, metrics: ["ndcg@10": .nan]), .wait(remaining: 1))
        XCTAssertEqual(es.update(epoch: 5, metrics: ["hr@10": 0.9]), .stop)
        XCTAssertEqual(es.bestEpoch, 2)
        XCTAssertEqual(es.bestValue, 0.12)
        var again = EarlyStopping(patience: 2)
        XCTAssertEqual(again.update(epoch: 1, metrics: ["ndcg@10": 0.1]), .improved)
        XCTAssertEqual(again.update(epoch: 2, metrics: ["ndcg@10": 0.05]), .wait(remaining: 1))
        XCTAssertEqual(again.update(epoch: 3, metrics: ["ndcg@10": 0.11]), .improved)
        XCTAssertEqual(again.epochsWithoutImprovement, 0)
    }
}
