// A C face for hnswlib's HNSW graph over inner products (Debian's libhnswlib-dev, header-only
// C++), so that Swift can build and query one without C++ interop. Errors come back as return
// codes with a message in the index; no exception crosses into Swift.
#ifndef CHNSW_H
#define CHNSW_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

typedef struct chnsw_index chnsw_index;

/// A graph for up to `max_elements` vectors of `dim` floats, `M` links per node, candidate list
/// `ef_construction` while inserting. NULL when it cannot be made.
chnsw_index *chnsw_create(int dim, size_t max_elements, size_t M, size_t ef_construction, size_t seed);
/// Inserts vector `vector` under `label`; 0 on success (thread-safe for distinct labels).
int chnsw_add(chnsw_index *index, const float *vector, size_t label);
/// The candidate list of searches (at least k).
void chnsw_set_ef(chnsw_index *index, size_t ef);
/// The k labels nearest by inner product (best first) into labels/scores; returns how many were found, -1 on error.
int chnsw_search(const chnsw_index *index, const float *query, size_t k, int64_t *labels, float *scores);
/// The last error's message ("" when none).
const char *chnsw_error(const chnsw_index *index);
void chnsw_free(chnsw_index *index);

#ifdef __cplusplus
}
#endif
#endif
