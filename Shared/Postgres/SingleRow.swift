import CPostgres

extension Connection {
    /// Runs a query and hands its rows to `body` one at a time as the server sends them
    /// (libpq's single-row mode), so a large result is never held in memory whole. Each row is a
    /// one-row ``QueryResult``. Returns the number of rows. If `body` throws, the query is
    /// cancelled on the server, the remaining rows are discarded and the error is rethrown.
    @discardableResult
    public func forEachRow(_ sql: String, _ params: [any PostgresBindable] = [], resultFormat: ResultFormat = .text,
                           _ body: (QueryResult) throws -> Void) throws -> Int {
        let bound = try BoundParameters(params)
        return try withLockedConnection { conn in
            let sent = bound.withArrays { values, lengths, formats in
                PQsendQueryParams(conn, sql, bound.count, nil, values, lengths, formats, resultFormat.rawValue)
            }
            guard sent == 1 else { throw PQError(function: "PQsendQueryParams", connection: conn) }
            guard PQsetSingleRowMode(conn) == 1 else {
                drainResults(conn)
                throw PQError(function: "PQsetSingleRowMode", message: "could not switch to single-row mode")
            }
            var rows = 0
            var failure: Error?
            while let res = PQgetResult(conn) {
                let status = PQresultStatus(res)
                if status == PGRES_SINGLE_TUPLE {
                    let row = QueryResult(handle: res)
                    guard failure == nil else { continue }
                    do {
                        try body(row)
                        rows += 1
                    } catch {
                        failure = error
                        if let cancel = PQgetCancel(conn) {
                            var message = [CChar](repeating: 0, count: 256)
                            _ = PQcancel(cancel, &message, Int32(message.count))
                            PQfreeCancel(cancel)
                        }
                    }
                } else if status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK {
                    PQclear(res)
                } else {
                    let error = PQError(function: "PQgetResult", result: res, connection: conn)
                    PQclear(res)
                    // A cancellation we asked for is not the caller's error.
                    if failure == nil { failure = error }
                }
            }
            if let failure { throw failure }
            return rows
        }
    }
}
