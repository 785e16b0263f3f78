/* The TriAttention round on the device: the host plans the round with the CPU policy's own helpers (kv_select.h)
 * and builds the synthetic queries in double; the device scores every candidate slot (fused scores), z-scores, takes
 * the GQA max and the layer mean, picks the top k, and compacts K, V and positions; the host mirror of positions is
 * compacted the same way from the keep marks. */
#include "backend_cuda.h"
#include "calibration.h"
#include "common.h"
#include "kv_select.h"
#include "model.h"
#include "triattn_score.h"

#include <string.h>


enum triattn_status tri_cu_compress(triattn_session * s, int32_t next_pos, char * err, size_t en) {
    tri_cu_session * c = s->backend_state;
    if (!c->triattention) {
        return TRIATTN_OK; /* full: nothing to evict; the session reports a full cache */
    }
    const int LK = c->L * c->Hkv, LH = c->L * c->H;
    int32_t * lo = c->h_lohi, * hi = c->h_lohi + LK;
    int64_t evicted = 0;
    if (!tri_kv_plan(&s->policy, &s->kv, c->window, lo, hi, c->h_k, &evicted)) {
        return TRIATTN_OK;
    }
    if (c->mode != TRI_CU_PER_LAYER_PER_HEAD) {
        for (int i = 0; i < LK; i++) {
            const int ref = c->mode == TRI_CU_GLOBAL ? 0 : i % c->Hkv;
            if (lo[i] != lo[ref] || hi[i] != hi[ref]) {
                return tri_fail(err, en, TRIATTN_ERR_INTERNAL,
                                "triattention: (layer %d, KV head %d) holds other tokens than its group", i / c->Hkv,
                                i % c->Hkv);
            }
        }
    }
    /* Selection groups: every (layer, KV head), each KV head, or one. */
    const int n_groups = c->mode == TRI_CU_PER_LAYER_PER_HEAD ? LK : c->mode == TRI_CU_GLOBAL ? 1 : c->Hkv;
    int max_n = 0;
    for (int i = 0; i < LK; i++) {
        max_n = TRI_MAX(max_n, hi[i] - lo[i]);
    }
    for (int g = 0; g < n_groups; g++) {
        c->h_nk[g] = hi[g] - lo[g];          /* group g's members share (0, g)'s range, or it is (l, h) itself */
        c->h_nk[LK + g] = c->h_k[g];
    }
    /* Synthetic queries of the round at the absolute position of the next token (host, double). */
    const tri_centres * ce = s->model->centres;
    tri_triattn_phase_n(c->F, c->omega, (double) next_pos, ce->n_offsets, c->a_re, c->a_im);
    for (int r = 0; r < LH; r++) {
        const size_t o = (size_t) r * c->F;
        tri_triattn_query(c->R, s->model->hp.rope_pairing, ce->q_re + o, ce->q_im + o, ce->q_abs + o, c->a_re, c->a_im,
                          1.0, c->h_w + (size_t) r * c->D, c->h_cw + (size_t) r * c->D);
    }
    const int pairing = s->model->hp.rope_pairing == TRI_ROPE_ADJACENT ? 0 : 1;
    const size_t capz = (size_t) c->cap;
    void * sm = c->stream;
    enum triattn_status st;
    TRI_CU_TRY(tri_cuda_set_device(TRI_CU_DEVICE));
    TRI_CU_TRY(tri_cuda_h2d(c->w, c->h_w, sizeof(float) * (size_t) LH * c->D, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->cw, c->h_cw, sizeof(float) * (size_t) LH * c->D, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->lohi, c->h_lohi, sizeof(int32_t) * 2 * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->nk, c->h_nk, sizeof(int32_t) * 2 * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_triattn_score(c->K, c->w, c->cw, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->D, c->R, pairing,
                                      c->cap, max_n, c->scores, sm));
    TRI_CU_TRY(tri_cuda_triattn_zscore(c->scores, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->cap, sm));
    TRI_CU_TRY(tri_cuda_triattn_gqa_max(c->scores, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->cap, max_n, c->agg,
                                        sm));
    const float * ranked = c->agg;
    if (c->mode != TRI_CU_PER_LAYER_PER_HEAD) {
        TRI_CU_TRY(tri_cuda_triattn_layer_mean(c->agg, c->lohi, c->lohi + LK, c->L, c->Hkv, c->cap, max_n,
                                               c->mode == TRI_CU_GLOBAL, c->mean, sm));
        ranked = c->mean;
    }
    TRI_CU_TRY(tri_cuda_topk(ranked, c->nk, c->nk + LK, n_groups, c->cap, c->marks, sm));
    TRI_CU_TRY(tri_cuda_d2h(c->h_marks, c->marks, (size_t) n_groups * capz, sm));
    TRI_CU_TRY(tri_cuda_sync(sm));

    /* Keep lists from the marks; the host mirror is compacted the same way as the device. */
    for (int i = 0; i < LK; i++) {
        if (hi[i] - lo[i] <= 0) {
            c->h_n_keep[i] = -1;
            continue;
        }
        const int h = i % c->Hkv;
        const int group = c->mode == TRI_CU_PER_LAYER_PER_HEAD ? i : c->mode == TRI_CU_GLOBAL ? 0 : h;
        int32_t * keep = c->h_keep + (size_t) i * capz;
        const int32_t nk = tri_kv_keep_list(lo[i], hi[i], s->kv.n_live[i], c->h_marks + (size_t) group * capz, keep);
        int32_t * pos = s->kv.pos + (size_t) i * capz;
        for (int32_t r = 0; r < nk; r++) {
            pos[r] = pos[keep[r]]; /* keep[r] >= r: in place, in order */
        }
        s->kv.n_live[i] = nk;
        c->h_n_keep[i] = nk;
    }
    TRI_CU_TRY(tri_cuda_h2d(c->keep, c->h_keep, sizeof(int32_t) * (size_t) LK * capz, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->n_keep, c->h_n_keep, sizeof(int32_t) * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_kv_gather(c->K, c->V, c->pos, c->n_live, c->keep, c->n_keep, LK, c->cap, c->D, sm));
    TRI_CU_TRY(tri_cuda_sync(sm));
    s->policy.n_compressions++;
    s->policy.n_evicted += evicted / LK;
    return TRIATTN_OK;
fail:
    return tri_fail(err, en, st, "CUDA backend: %s (the session's cache may be inconsistent: reset it)",
                    tri_cuda_last_error());
}

