#include "chnsw.h"
#include <hnswlib/hnswlib.h>
#include <string>
#include <vector>
#include <algorithm>

struct chnsw_index {
    hnswlib::InnerProductSpace space;
    hnswlib::HierarchicalNSW<float> graph;
    mutable std::string error;
    chnsw_index(int dim, size_t max_elements, size_t M, size_t ef, size_t seed)
        : space(dim), graph(&space, max_elements, M, ef, seed) {}
};

extern "C" chnsw_index *chnsw_create(int dim, size_t max_elements, size_t M, size_t ef_construction, size_t seed) {
    try { return new chnsw_index(dim, max_elements, M, ef_construction, seed); } catch (...) { return nullptr; }
}

extern "C" int chnsw_add(chnsw_index *index, const float *vector, size_t label) {
    try { index->graph.addPoint(vector, label); return 0; }
    catch (const std::exception &e) { index->error = e.what(); return -1; }
}

extern "C" void chnsw_set_ef(chnsw_index *index, size_t ef) { index->graph.setEf(ef); }

extern "C" int chnsw_search(const chnsw_index *index, const float *query, size_t k, int64_t *labels, float *scores) {
    try {
        auto found = index->graph.searchKnn(query, k);
        // the queue pops the worst first; its distance is 1 - inner product
        int n = (int)found.size();
        for (int i = n - 1; i >= 0; --i) {
            labels[i] = (int64_t)found.top().second;
            scores[i] = 1.0f - found.top().first;
            found.pop();
        }
        return n;
    } catch (const std::exception &e) { index->error = e.what(); return -1; }
}

extern "C" const char *chnsw_error(const chnsw_index *index) { return index->error.c_str(); }

extern "C" void chnsw_free(chnsw_index *index) { delete index; }
