/* test_recall.c - tier 2 and recall (src/kv_tier2.c, src/kv_recall.c, src/session_recall.c): 8-bit rows against a
 * double oracle, the append-only pages (dedupe by position, 16-bit offsets, the byte cap), compaction moving what
 * it evicts to tier 2, recall scores against a float64 softmax oracle, the swaps of a recall on hand-built caches
 * (the best tier-2 rows in place of the worst replaceable cache rows, sink and window kept, shared groups
 * identical), and with the real model (TRI_DEFAULT_MODEL): the cache bound, recalls at the chat marker, one call
 * equal to any split into calls, save/load. Random inputs, fresh seed each run (TRI_TEST_SEED reproduces one). */
#include "triattn.h"
#include "calibration.h"
#include "kv_cache.h"
#include "kv_recall.h"
#include "kv_select.h"
#include "kv_tier2.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

/* ---- 8-bit K and 7-bit V rows ------------------------------------------------------------------------ */

static void test_quantize(void) {
    int bad = 0;
    for (int it = 0; it < 800; it++) {
        const int D = (int) tu_int(1, 256), qmax = it & 1 ? TRI_T2_VMAX : TRI_T2_KMAX;
        const double scale = exp(tu_uniform() * 14.0 - 9.0);
        tri_fp16 x[256], y[256];
        int8_t q[256];
        tri_fp16 s16;
        double amax = 0.0;
        for (int d = 0; d < D; d++) {
            x[d] = tri_fp32_to_fp16(it % 97 == 0 ? 0.0f : (float) (scale * tu_normal()));
            amax = tu_max(amax, fabs(tri_fp16_to_fp32(x[d])));
        }
        tri_t2_quantize_row(x, D, qmax, q, &s16);
        tri_t2_dequantize_row(q, s16, D, y);
        const double s = tri_fp16_to_fp32(s16);
        /* oracle: the smallest F16 value >= amax / qmax (a scan of the positive halves), then round(x / s) */
        double want_s = 0.0;
        for (uint32_t hb = 0; hb < 0x7c00; hb++) {
            const double hv = tri_fp16_to_fp32((tri_fp16) hb);
            if (hv * qmax >= amax * (1.0 - 1e-7)) {
                want_s = hv;
                break;
            }
        }
        if (amax == 0.0 || want_s == 0.0) {
            for (int d = 0; d < D; d++) {
                bad += q[d] != 0;
            }
            CHECK(s16 == 0, "zero row: scale %g", s);
            continue;
        }
        CHECK(s == want_s, "scale %.9g, want %.9g (amax %g)", s, want_s, amax);
        for (int d = 0; d < D; d++) {
            const double v = tri_fp16_to_fp32(x[d]) / s;
            const double r = fmin(qmax, tu_max(-qmax, nearbyint(v)));
            const bool tie = fabs(fabs(v - trunc(v)) - 0.5) < 1e-5;
            const double err = fabs(tri_fp16_to_fp32(y[d]) - tri_fp16_to_fp32(x[d]));
            const bool b = (q[d] != (int8_t) r && !(tie && abs(q[d] - (int) r) <= 1)) ||
                           err > 0.5 * s * 1.0001 + fabs(tri_fp16_to_fp32(x[d])) * 0x1p-10 + 1e-7;
            if (b && bad < 5) {
                printf("  x %.9g s %.9g v %.9g q %d want %g err %g\n", tri_fp16_to_fp32(x[d]), s, v, q[d], r, err);
            }
            bad += b;
        }
    }
    CHECK(bad == 0, "%d quantised values off the oracle or outside the error bound", bad);
}

/* 7-bit packing against a bit-by-bit oracle: code d occupies bits [7d, 7d + 7) of the row, low bit first. */
static void test_pack7(void) {
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        const int D = (int) tu_int(1, TRI_T2_MAX_DIM);
        int8_t q[TRI_T2_MAX_DIM], back[TRI_T2_MAX_DIM];
        uint8_t packed[TRI_T2_MAX_DIM + 1];
        const size_t nb = tri_t2_vbytes(D);
        for (int d = 0; d < D; d++) {
            q[d] = (int8_t) ((int) tu_int(0, 127) - 64);
        }
        memset(packed, 0xa5, sizeof packed);
        tri_t2_pack7(q, D, packed);
        bad += nb != ((size_t) D * 7 + 7) / 8 || packed[nb] != 0xa5; /* nothing written past the row */
        for (int d = 0; d < D; d++) {
            int c = 0;
            for (int b = 0; b < 7; b++) {
                const int bit = 7 * d + b;
                c |= ((packed[bit / 8] >> (bit % 8)) & 1) << b;
            }
            bad += c != (q[d] & 0x7f);
        }
        tri_t2_unpack7(packed, D, back);
        bad += memcmp(q, back, (size_t) D) != 0;
    }
    CHECK(bad == 0, "7-bit packing: %d mismatches", bad);
}

/* ---- the pages --------------------------------------------------------------------------------------- */

/* A page row at head_dim >= 64 costs at most half of full attention's F16 K and V row; too wide a head is refused. */
static void test_tier2_row_bytes(void) {
    char err[256];
    for (int D = 48; D <= TRI_T2_MAX_DIM; D += 16) {
        tri_kv_tier2 t;
        CHECK(tri_kv_tier2_init(&t, 1, 1, D, 1024, 0, 1, err, sizeof err) == TRIATTN_OK, "init D %d: %s", D, err);
        const double per_row = (double) t.page_bytes / TRI_T2_PAGE_ROWS;
        CHECK(D < 64 || per_row <= 2.0 * D, "head_dim %d: %.2f bytes a row, half of F16 K and V is %d", D, per_row, 2 * D);
        tri_kv_tier2_free(&t);
    }
    tri_kv_tier2 t;
    CHECK(tri_kv_tier2_init(&t, 1, 1, TRI_T2_MAX_DIM + 8, 1024, 0, 1, err, sizeof err) == TRIATTN_ERR_UNSUPPORTED &&
          strstr(err, "head_dim"), "a head_dim above the limit: %s", err);
}

static void rand_row(tri_fp16 * x, int D, double scale) {
    for (int d = 0; d < D; d++) {
        x[d] = tri_fp32_to_fp16((float) (scale * tu_normal()));
    }
}

/* Rows of (il, h) in tier-2 order: positions into pos (returns the count). */
static int32_t t2_positions(const tri_kv_tier2 * t, int il, int h, int32_t * pos) {
    const tri_t2_head * th = tri_kv_tier2_head(t, il, h);
    int32_t n = 0;
    for (int32_t p = 0; p < th->n_pages; p++) {
        for (int32_t j = 0; j < th->pages[p]->n; j++) {
            pos[n++] = th->pages[p]->base + th->pages[p]->off[j];
        }
    }
    return n;
}

static void test_tier2_store(void) {
    enum { D = 16, N = 1500, NCTX = 300000 };
    char err[256];
    tri_kv_tier2 t;
    CHECK(tri_kv_tier2_init(&t, 2, 2, D, NCTX, 0, 4, err, sizeof err) == TRIATTN_OK, "init: %s", err);
    static int32_t want[N], got[N];
    static tri_fp16 kw[N][D], vw[N][D];
    int32_t nw = 0, p = 0;
    for (int i = 0; i < N; i++) {
        /* mostly increasing, some older rows later (swapped out by a recall), a jump past 16-bit offsets,
         * and repeats of held positions (not stored twice) */
        int32_t pos = p;
        const double u = tu_uniform();
        if (u < 0.1 && nw > 0) {
            pos = want[tu_below((uint64_t) nw)];
        } else if (u < 0.2) {
            pos = (int32_t) tu_below((uint64_t) p + 1);
        } else {
            p += (int32_t) tu_int(1, 3) + (i == N / 2 ? 100000 : 0);
            pos = p;
        }
        tri_fp16 k[D], v[D];
        rand_row(k, D, 2.0);
        rand_row(v, D, 0.5);
        const bool held = tri_kv_tier2_has(tri_kv_tier2_head(&t, 1, 1), pos);
        tri_kv_tier2_append(&t, 1, 1, pos, k, v);
        if (!held) {
            memcpy(kw[nw], k, sizeof k);
            memcpy(vw[nw], v, sizeof v);
            want[nw++] = pos;
        }
    }
    const int32_t ng = t2_positions(&t, 1, 1, got);
    CHECK(ng == nw && memcmp(got, want, sizeof(int32_t) * (size_t) nw) == 0, "tier-2 order: %d rows, want %d", ng, nw);
    CHECK(tri_kv_tier2_rows(&t) == nw && tri_kv_tier2_dropped(&t) == 0, "rows %lld, dropped %lld",
          (long long) tri_kv_tier2_rows(&t), (long long) tri_kv_tier2_dropped(&t));
    /* rows read back within the quantisation bound (the scales from each row's own max), the bitmap exactly the
     * held positions */
    const tri_t2_head * th = tri_kv_tier2_head(&t, 1, 1);
    int bad = 0, r = 0;
    for (int32_t pg = 0; pg < th->n_pages; pg++) {
        tri_fp16 k[TRI_T2_PAGE_ROWS * D], v[TRI_T2_PAGE_ROWS * D];
        tri_kv_tier2_page_f16(th->pages[pg], D, 0, th->pages[pg]->n, k, v);
        for (int32_t j = 0; j < th->pages[pg]->n; j++, r++) {
            float kmax = 0.0f, vmax = 0.0f;
            for (int d = 0; d < D; d++) {
                kmax = fmaxf(kmax, fabsf(tri_fp16_to_fp32(kw[r][d])));
                vmax = fmaxf(vmax, fabsf(tri_fp16_to_fp32(vw[r][d])));
            }
            const float ks = tri_fp16_to_fp32(th->pages[pg]->ks[j]), vs = tri_fp16_to_fp32(th->pages[pg]->vs[j]);
            bad += ks < kmax / TRI_T2_KMAX || ks > kmax / TRI_T2_KMAX * 1.001f || vs < vmax / TRI_T2_VMAX ||
                   vs > vmax / TRI_T2_VMAX * 1.001f;
            for (int d = 0; d < D; d++) {
                const float x = tri_fp16_to_fp32(kw[r][d]), y = tri_fp16_to_fp32(vw[r][d]);
                bad += fabsf(tri_fp16_to_fp32(k[j * D + d]) - x) > ks * 0.5f * 1.001f + fabsf(x) * 0x1p-10f + 1e-7f;
                bad += fabsf(tri_fp16_to_fp32(v[j * D + d]) - y) > vs * 0.5f * 1.001f + fabsf(y) * 0x1p-10f + 1e-7f;
            }
        }
    }
    CHECK(bad == 0, "%d values read back outside the bound", bad);
    int set = 0;
    for (int32_t q = 0; q < NCTX; q++) {
        set += tri_kv_tier2_has(th, q);
    }
    CHECK(set == nw, "bitmap holds %d positions, want %d", set, nw);
    CHECK(tri_kv_tier2_head(&t, 0, 0)->n_rows == 0, "another head got rows");
    const uint64_t bytes = tri_kv_tier2_bytes(&t);
    CHECK(bytes >= (uint64_t) nw * (D + tri_t2_vbytes(D) + 6) && bytes < (uint64_t) th->n_pages * t.page_bytes + 4 * (NCTX / 8) + 4096,
          "bytes %llu for %d rows in %d pages", (unsigned long long) bytes, nw, th->n_pages);
    tri_kv_tier2_clear(&t);
    CHECK(tri_kv_tier2_rows(&t) == 0 && !tri_kv_tier2_has(th, want[0]), "clear left rows");
    tri_kv_tier2_free(&t);

    /* the cap: 3 pages per (layer, KV head); the oldest pages go and are counted, their positions forgotten */
    tri_kv_tier2 c;
    tri_kv_tier2_init(&c, 1, 1, D, 4096, 1, 1, err, sizeof err);
    const uint64_t cap = 3 * c.page_bytes;
    tri_kv_tier2_free(&c);
    CHECK(tri_kv_tier2_init(&c, 1, 1, D, 4096, cap, 1, err, sizeof err) == TRIATTN_OK && c.max_pages == 3, "cap init");
    tri_fp16 k[D], v[D];
    rand_row(k, D, 1.0);
    rand_row(v, D, 1.0);
    for (int32_t pos = 0; pos < 10 * TRI_T2_PAGE_ROWS; pos++) {
        tri_kv_tier2_append(&c, 0, 0, pos, k, v);
    }
    const tri_t2_head * ch = tri_kv_tier2_head(&c, 0, 0);
    CHECK(ch->n_pages == 3 && ch->n_rows == 3 * TRI_T2_PAGE_ROWS && ch->n_dropped == 7 * TRI_T2_PAGE_ROWS,
          "cap: %d pages, %lld rows, %lld dropped", ch->n_pages, (long long) ch->n_rows, (long long) ch->n_dropped);
    CHECK(!tri_kv_tier2_has(ch, 0) && tri_kv_tier2_has(ch, 7 * TRI_T2_PAGE_ROWS) &&
          ch->pages[0]->base + ch->pages[0]->off[0] == 7 * TRI_T2_PAGE_ROWS, "cap: the oldest rows did not go");
    tri_kv_tier2_free(&c);
}

/* ---- compaction moves evicted rows to tier 2 ------------------------------------------------------------ */

static void fill_head(tri_kv_cache * c, int il, int h, const int32_t * pos, int32_t n, double kscale) {
    for (int32_t j = 0; j < n; j++) {
        rand_row(tri_kv_k(c, il, h) + (size_t) j * c->head_dim, c->head_dim, kscale);
        rand_row(tri_kv_v(c, il, h) + (size_t) j * c->head_dim, c->head_dim, 1.0);
        tri_kv_pos(c, il, h)[j] = pos[j];
    }
    c->n_live[tri_kv_index(c, il, h)] = n;
}

static void test_compact_to_tier2(void) {
    enum { L = 2, HKV = 2, D = 16, CAP = 64 };
    char err[256];
    tri_kv_cache c;
    CHECK(tri_kv_cache_init(&c, L, HKV, D, CAP, err, sizeof err) == TRIATTN_OK, "cache: %s", err);
    CHECK(tri_kv_cache_enable_tier2(&c, 4096, 0, err, sizeof err) == TRIATTN_OK, "tier 2: %s", err);
    int32_t pos[CAP], keep[CAP], ev[CAP], nk = 0, ne = 0;
    for (int32_t j = 0, p = 0; j < CAP; j++) {
        p += (int32_t) tu_int(1, 5);
        pos[j] = p;
    }
    fill_head(&c, 1, 0, pos, CAP, 1.0);
    static tri_fp16 k0[CAP * D], v0[CAP * D];
    memcpy(k0, tri_kv_k(&c, 1, 0), sizeof k0);
    memcpy(v0, tri_kv_v(&c, 1, 0), sizeof v0);
    for (int32_t j = 0; j < CAP; j++) {
        if (tu_uniform() < 0.6) {
            keep[nk++] = j;
        } else {
            ev[ne++] = j;
        }
    }
    tri_kv_compact(&c, 1, 0, keep, nk);
    int32_t got[CAP];
    const int32_t ng = t2_positions(c.t2, 1, 0, got);
    bool ok = ng == ne;
    for (int32_t i = 0; ok && i < ne; i++) {
        ok = got[i] == pos[ev[i]];
    }
    CHECK(ok, "tier 2 holds %d rows, want the %d evicted in slot order", ng, ne);
    ok = c.n_live[tri_kv_index(&c, 1, 0)] == nk;
    for (int32_t i = 0; ok && i < nk; i++) {
        ok = tri_kv_pos(&c, 1, 0)[i] == pos[keep[i]] &&
             memcmp(tri_kv_k(&c, 1, 0) + (size_t) i * D, k0 + (size_t) keep[i] * D, sizeof(tri_fp16) * D) == 0 &&
             memcmp(tri_kv_v(&c, 1, 0) + (size_t) i * D, v0 + (size_t) keep[i] * D, sizeof(tri_fp16) * D) == 0;
    }
    CHECK(ok, "kept rows changed");
    /* a row whose position tier 2 holds (a recalled row) is not stored again when evicted again */
    const int32_t live = c.n_live[tri_kv_index(&c, 1, 0)];
    if (ne > 0 && live > 0) {
        tri_kv_pos(&c, 1, 0)[live - 1] = pos[ev[0]] > tri_kv_pos(&c, 1, 0)[live - 2 > 0 ? live - 2 : 0] ? pos[ev[0]]
                                                                                                     : pos[CAP - 1] + 50;
        const bool held = tri_kv_tier2_has(tri_kv_tier2_head(c.t2, 1, 0), tri_kv_pos(&c, 1, 0)[live - 1]);
        const int64_t before = tri_kv_tier2_rows(c.t2);
        tri_kv_compact(&c, 1, 0, keep, 0);   /* evict everything */
        CHECK(tri_kv_tier2_rows(c.t2) == before + live - (held ? 1 : 0), "re-evicted rows: %lld, want %lld",
              (long long) tri_kv_tier2_rows(c.t2), (long long) (before + live - (held ? 1 : 0)));
    }
    tri_kv_cache_clear(&c);
    CHECK(tri_kv_tier2_rows(c.t2) == 0, "clear kept tier 2");
    tri_kv_cache_free(&c);
}

/* ---- recall scores against a float64 oracle ------------------------------------------------------------- */

/* Double softmax oracle of tri_kv_recall_scores for (il, h). */
static void oracle_scores(const tri_kv_cache * c, int il, int h, int G, double scale, double * out) {
    const int D = c->head_dim;
    const int32_t live = c->n_live[tri_kv_index(c, il, h)];
    const tri_t2_head * th = tri_kv_tier2_head(c->t2, il, h);
    const int32_t n2 = th->n_pages * TRI_T2_PAGE_ROWS, n = live + n2;
    double * K = malloc(sizeof(double) * (size_t) n * D);
    int32_t * pos = malloc(sizeof(int32_t) * (size_t) n);
    bool * use = malloc((size_t) n);
    for (int32_t j = 0; j < n; j++) {
        use[j] = false;
        out[j] = -INFINITY;
        if (j < live) {
            pos[j] = tri_kv_pos(c, il, h)[j];
            for (int d = 0; d < D; d++) {
                K[(size_t) j * D + d] = tri_fp16_to_fp32(tri_kv_k(c, il, h)[(size_t) j * D + d]);
            }
            use[j] = true;
            continue;
        }
        const tri_t2_page * pg = th->pages[(j - live) / TRI_T2_PAGE_ROWS];
        const int32_t r = (j - live) % TRI_T2_PAGE_ROWS;
        if (r >= pg->n) {
            continue;
        }
        pos[j] = pg->base + pg->off[r];
        bool in_cache = false;
        for (int32_t i = 0; i < live; i++) {
            in_cache |= tri_kv_pos(c, il, h)[i] == pos[j];
        }
        use[j] = !in_cache;
        const double s = tri_fp16_to_fp32(pg->ks[r]);
        for (int d = 0; d < D; d++) {  /* the F16 row a recall would write */
            K[(size_t) j * D + d] = tri_fp16_to_fp32(tri_fp32_to_fp16((float) (tri_t2_page_k(pg, r, D)[d] * s)));
        }
    }
    const int64_t count = c->q_count[il];
    const int nq = (int) (count < TRI_RECALL_QUERIES ? count : TRI_RECALL_QUERIES);
    double * lg = malloc(sizeof(double) * (size_t) n);
    for (int t = 0; t < nq; t++) {
        const size_t e = (size_t) il * c->q_cap + (size_t) ((count - nq + t) % c->q_cap);
        const int32_t qp = c->q_pos[e];
        for (int g = 0; g < G; g++) {
            const float * q = c->q + e * c->q_dim + ((size_t) h * G + g) * D;
            double mx = -INFINITY, sum = 0.0;
            for (int32_t j = 0; j < n; j++) {
                lg[j] = -INFINITY;
                if (use[j] && pos[j] <= qp) {
                    double a = 0.0;
                    for (int d = 0; d < D; d++) {
                        a += (double) q[d] * K[(size_t) j * D + d];
                    }
                    lg[j] = a * scale;
                    mx = tu_max(mx, lg[j]);
                }
            }
            for (int32_t j = 0; j < n; j++) {
                sum += lg[j] > -INFINITY ? exp(lg[j] - mx) : 0.0;
            }
            for (int32_t j = 0; j < n; j++) {
                if (lg[j] > -INFINITY) {
                    out[j] = tu_max(out[j], exp(lg[j] - mx) / sum);
                }
            }
        }
    }
    free(K);
    free(pos);
    free(use);
    free(lg);
}

/* A cache of L x HKV heads whose (il, h) hold live rows at the given positions and tier-2 rows at others;
 * n_q queries pushed into every layer's ring at the last positions. */
typedef struct rc_fx {
    tri_kv_cache c;
    int L, HKV, G, D;
} rc_fx;

static void rc_fx_init(rc_fx * f, int L, int HKV, int G, int D, int cap) {
    char err[256];
    memset(f, 0, sizeof *f);
    f->L = L; f->HKV = HKV; f->G = G; f->D = D;
    CHECK(tri_kv_cache_init(&f->c, L, HKV, D, cap, err, sizeof err) == TRIATTN_OK, "cache: %s", err);
    CHECK(tri_kv_cache_enable_tier2(&f->c, 100000, 0, err, sizeof err) == TRIATTN_OK, "tier 2: %s", err);
    CHECK(tri_kv_cache_enable_queries(&f->c, TRI_RECALL_QUERIES, HKV * G * D, err, sizeof err) == TRIATTN_OK,
          "queries: %s", err);
}

static void test_recall_scores(void) {
    rc_fx f;
    const int G = (int) tu_int(1, 3), D = 8 * (int) tu_int(1, 8), L = 2, HKV = 2;
    rc_fx_init(&f, L, HKV, G, D, 48);
    tri_kv_cache * c = &f.c;
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < HKV; h++) {
            /* positions 0..299: 40 in the cache (the last 12 among them), 150 others in tier 2 (random order), and
             * a few tier-2 rows of positions the cache holds too (recalled rows) */
            int32_t perm[300];
            for (int i = 0; i < 300; i++) {
                perm[i] = i;
            }
            for (int i = 0; i < 288; i++) {
                const int j = i + (int) tu_below((uint64_t) (288 - i));
                const int32_t x = perm[i];
                perm[i] = perm[j];
                perm[j] = x;
            }
            int32_t live[40];
            memcpy(live, perm, sizeof(int32_t) * 28);
            for (int i = 0; i < 12; i++) {
                live[28 + i] = 288 + i;
            }
            for (int i = 1; i < 40; i++) { /* sort */
                const int32_t x = live[i];
                int j = i - 1;
                while (j >= 0 && live[j] > x) {
                    live[j + 1] = live[j];
                    j--;
                }
                live[j + 1] = x;
            }
            fill_head(c, il, h, live, 40, 1.5);
            tri_fp16 k[64], v[64];
            for (int i = 0; i < 150; i++) {
                rand_row(k, D, 1.5);
                rand_row(v, D, 1.0);
                tri_kv_tier2_append(c->t2, il, h, i < 145 ? perm[28 + i] : live[i - 145], k, v);
            }
        }
        const int nq = (int) tu_int(1, 40); /* more than the ring holds: it wraps */
        float q[3 * 2 * 64];
        for (int t = 0; t < nq; t++) {
            for (int d = 0; d < HKV * G * D; d++) {
                q[d] = (float) tu_normal();
            }
            tri_kv_push_query(c, il, q, 300 - nq + t);
        }
    }
    float * scratch = malloc(sizeof(float) * tri_kv_recall_scratch(c, G, 48 + 2 * TRI_T2_PAGE_ROWS));
    const double scale = 1.0 / sqrt((double) D);
    int bad = 0, finite = 0;
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < HKV; h++) {
            const int32_t n = c->n_live[tri_kv_index(c, il, h)] + tri_kv_tier2_head(c->t2, il, h)->n_pages * TRI_T2_PAGE_ROWS;
            float * got = malloc(sizeof(float) * (size_t) n);
            double * want = malloc(sizeof(double) * (size_t) n);
            tri_kv_recall_scores(c, il, h, G, (float) scale, got, scratch);
            oracle_scores(c, il, h, G, scale, want);
            for (int32_t j = 0; j < n; j++) {
                if (isinf(want[j]) || isinf(got[j])) {
                    bad += !(isinf(want[j]) && isinf(got[j]));
                } else {
                    finite++;
                    bad += fabs(got[j] - want[j]) > 2e-4 * want[j] + 1e-6;
                }
            }
            free(got);
            free(want);
        }
    }
    CHECK(bad == 0 && finite > 0, "%d of the recall scores differ from the float64 oracle (%d finite)", bad, finite);
    free(scratch);
    tri_kv_cache_free(c);
}

/* ---- the swaps of a recall --------------------------------------------------------------------------- */

static void test_recall_swaps(enum tri_kv_share share) {
    enum { L = 3, HKV = 2, G = 1, D = 16, LIVE = 40, N2 = 34, R = 6, SINK = 2, WIN = 4 };
    rc_fx f;
    rc_fx_init(&f, L, HKV, G, D, LIVE);
    tri_kv_cache * c = &f.c;
    /* positions 20 apart (the pooling window never joins two rows); the cache holds 40 of them, tier 2 34, all
     * after the sink slots and older than the cache's recent window (as evicted rows are) */
    int32_t live[LIVE], t2pos[N2];
    for (int i = 0; i < LIVE; i++) {
        live[i] = 40 * i + 20;
    }
    for (int i = 0; i < N2; i++) {
        t2pos[i] = 40 * i + 80;
    }
    const int32_t qpos = 40 * LIVE + 100;
    /* the cache's last slot is the query's own token */
    live[LIVE - 1] = qpos;
    float q[HKV * G * D];
    for (int d = 0; d < HKV * G * D; d++) {
        q[d] = (float) tu_normal();
    }
    const int hot = (int) tu_int(1, 3);   /* tier-2 rows aligned with the query */
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < HKV; h++) {
            fill_head(c, il, h, live, LIVE, 0.3);
            for (int i = 0; i < N2; i++) {
                tri_fp16 k[D], v[D];
                rand_row(k, D, 0.3);
                rand_row(v, D, 1.0);
                for (int d = 0; i % 13 == 5 && i / 13 < hot && d < D; d++) {
                    k[d] = tri_fp32_to_fp16(0.8f * q[h * G * D + d]);
                }
                tri_kv_tier2_append(c->t2, il, h, t2pos[i], k, v);
            }
        }
        tri_kv_push_query(c, il, q, qpos);
    }
    if (share != TRI_KV_SHARE_NONE) { /* shared groups hold the same tokens: copy layer 0's rows (both tiers) */
        for (int il = 1; il < L; il++) {
            for (int h = 0; h < HKV; h++) {
                const int h0 = share == TRI_KV_SHARE_ALL ? 0 : h;
                memcpy(tri_kv_k(c, il, h), tri_kv_k(c, 0, h0), sizeof(tri_fp16) * LIVE * D);
                tri_t2_head * a = tri_kv_tier2_head(c->t2, il, h), * b = tri_kv_tier2_head(c->t2, 0, h0);
                for (int32_t p = 0; p < a->n_pages; p++) {
                    memcpy(a->pages[p], b->pages[p], c->t2->page_bytes);
                }
            }
        }
        if (share == TRI_KV_SHARE_ALL) {
            memcpy(tri_kv_k(c, 0, 1), tri_kv_k(c, 0, 0), sizeof(tri_fp16) * LIVE * D);
            tri_t2_head * a = tri_kv_tier2_head(c->t2, 0, 1), * b = tri_kv_tier2_head(c->t2, 0, 0);
            for (int32_t p = 0; p < a->n_pages; p++) {
                memcpy(a->pages[p], b->pages[p], c->t2->page_bytes);
            }
        }
    }
    /* the oracle's choice: group score = max over members; best tier-2 rows against worst candidates */
    const int LK = L * HKV;
    double * sc[L * HKV];
    for (int i = 0; i < LK; i++) {
        sc[i] = malloc(sizeof(double) * (LIVE + 128));
        oracle_scores(c, i / HKV, i % HKV, G, 1.0 / sqrt((double) D), sc[i]);
    }
    tri_kv_policy p;
    memset(&p, 0, sizeof p);
    p.cfg = (tri_kv_policy_cfg) { .n_ctx = 100000, .budget = LIVE - 8, .interval = 8, .window = WIN, .sink = SINK };
    p.share = share;
    int32_t want_rec[L * HKV][R], want_out[L * HKV][R], want_s[L * HKV];
    for (int i = 0; i < LK; i++) {
        double g[LIVE + 128];
        for (int j = 0; j < LIVE + 128; j++) {
            g[j] = -INFINITY;
            for (int m = 0; m < LK; m++) {
                const bool member = share == TRI_KV_SHARE_ALL || (share == TRI_KV_SHARE_LAYERS && m % HKV == i % HKV) || m == i;
                g[j] = member ? tu_max(g[j], sc[m][j]) : g[j];
            }
        }
        /* R best tier-2 slots (descending) and R worst candidates [SINK, LIVE - WIN) (ascending) */
        int32_t best[R], worst[R];
        for (int r = 0; r < R; r++) {
            int32_t b = -1, w = -1;
            for (int j = LIVE; j < LIVE + 128; j++) {
                bool used = false;
                for (int x = 0; x < r; x++) used |= best[x] == j;
                if (!used && g[j] > -INFINITY && (b < 0 || g[j] > g[b])) b = j;
            }
            for (int j = SINK; j < LIVE - WIN; j++) {
                bool used = false;
                for (int x = 0; x < r; x++) used |= worst[x] == j;
                if (!used && (w < 0 || g[j] < g[w])) w = j;
            }
            best[r] = b;
            worst[r] = w;
        }
        int s = 0;
        while (s < R && best[s] >= 0 && g[best[s]] > g[worst[s]]) {
            s++;
        }
        want_s[i] = s;
        for (int r = 0; r < s; r++) {
            const tri_t2_page * pg = tri_kv_tier2_head(c->t2, i / HKV, i % HKV)->pages[(best[r] - LIVE) / TRI_T2_PAGE_ROWS];
            want_rec[i][r] = pg->base + pg->off[(best[r] - LIVE) % TRI_T2_PAGE_ROWS];
            want_out[i][r] = live[worst[r]];
        }
    }
    tri_threadpool * tp = tri_threadpool_create(2);
    int64_t recalled = 0;
    char err[256];
    const enum triattn_status st = tri_kv_recall(c, &p, G, 1.0f / sqrtf((float) D), R, WIN, tp, &recalled, err, sizeof err);
    CHECK(st == TRIATTN_OK, "recall: %s", err);
    int64_t want_total = 0;
    int bad = 0;
    for (int i = 0; i < LK; i++) {
        const int il = i / HKV, h = i % HKV;
        want_total += want_s[i];
        const int32_t * pos = tri_kv_pos(c, il, h);
        bad += c->n_live[i] != LIVE;
        for (int j = 1; j < LIVE; j++) {
            bad += pos[j] <= pos[j - 1];
        }
        for (int j = 0; j < SINK; j++) {
            bad += pos[j] != live[j];
        }
        for (int j = LIVE - WIN; j < LIVE; j++) {
            bad += pos[j] != live[j];
        }
        for (int r = 0; r < want_s[i]; r++) {
            bool in = false, out = true;
            for (int j = 0; j < LIVE; j++) {
                in |= pos[j] == want_rec[i][r];
                out &= pos[j] != want_out[i][r];
            }
            const bool b = !in || !out || !tri_kv_tier2_has(tri_kv_tier2_head(c->t2, il, h), want_out[i][r]);
            if (b) {
                printf("  share %d member %d swap %d/%d: recalled %d in %d, replaced %d out %d\n", share, i, r,
                       want_s[i], want_rec[i][r], in, want_out[i][r], out);
            }
            bad += b;
        }
    }
    CHECK(bad == 0 && recalled == want_total && want_total >= LK * hot,
          "share %d: %d checks failed, %lld rows recalled, the oracle %lld (hot rows %d)", share, bad,
          (long long) recalled, (long long) want_total, hot);
    /* a recalled row carries its tier-2 values (8-bit, back in F16) */
    const tri_t2_head * th = tri_kv_tier2_head(c->t2, 0, 0);
    int32_t val_bad = 0;
    for (int32_t pg = 0; pg < th->n_pages; pg++) {
        for (int32_t j = 0; j < th->pages[pg]->n; j++) {
            const int32_t ps = th->pages[pg]->base + th->pages[pg]->off[j];
            for (int s = 0; s < LIVE; s++) {
                if (tri_kv_pos(c, 0, 0)[s] == ps) { /* a tier-2 position in the cache: a recalled row */
                    tri_fp16 k[D];
                    tri_kv_tier2_page_f16(th->pages[pg], D, j, 1, k, NULL);
                    val_bad += memcmp(k, tri_kv_k(c, 0, 0) + (size_t) s * D, sizeof k) != 0;
                }
            }
        }
    }
    CHECK(val_bad == 0, "%d recalled rows differ from their tier-2 values", val_bad);
    if (share == TRI_KV_SHARE_LAYERS) { /* members of a group that disagree are refused */
        tri_kv_pos(c, 1, 0)[SINK] += 1;
        CHECK(tri_kv_recall(c, &p, G, 1.0f, R, WIN, tp, &recalled, err, sizeof err) == TRIATTN_ERR_INTERNAL,
              "a group whose members differ was recalled into");
    }
    for (int i = 0; i < LK; i++) {
        free(sc[i]);
    }
    tri_threadpool_free(tp);
    tri_kv_cache_free(c);
}

/* ---- the real model --------------------------------------------------------------------------------- */

static void session_positions(const triattn_session * s, int32_t * out, int32_t * n) {
    *n = 0;
    for (int i = 0; i < s->kv.n_layer * s->kv.n_head_kv; i++) {
        const int32_t live = s->kv.n_live[i];
        memcpy(out + *n, tri_kv_pos(&s->kv, i / s->kv.n_head_kv, i % s->kv.n_head_kv), sizeof(int32_t) * live);
        *n += live;
        out[(*n)++] = -1;
    }
}

/* Random tokens with the recall marker at a few places; returns the count. */
static int32_t marked_prompt(const triattn_session * s, triattn_token * t, int32_t n, int n_marks, int32_t n_vocab) {
    for (int32_t i = 0; i < n; i++) {
        t[i] = (triattn_token) tu_int(1000, n_vocab - 1);
    }
    for (int k = 0; k < n_marks; k++) {
        const int32_t at = (int32_t) tu_int(0, n - s->n_recall_marker);
        memcpy(t + at, s->recall_marker, sizeof(triattn_token) * (size_t) s->n_recall_marker);
    }
    return n;
}

static void test_sessions(triattn_model * m) {
    enum { N = 700, BUDGET = 64, INTERVAL = 16, R = 12 };
    struct triattn_model_info info;
    triattn_model_get_info(m, &info);
    triattn_session * a = tu_session_recall(m, "triattention", NULL, -1, BUDGET, INTERVAL, 2048, 0, R);
    triattn_session * b = tu_session_recall(m, "triattention", NULL, -1, BUDGET, INTERVAL, 2048, 0, R);
    if (!a || !b) {
        return;
    }
    CHECK(a->kv.t2 && a->n_recall_marker > 0, "no tier 2 or no recall marker (%d tokens)", a->n_recall_marker);
    if (a->n_recall_marker <= 0) {
        return;
    }
    static triattn_token toks[N];
    marked_prompt(a, toks, N, 3, info.n_vocab);
    /* the marker also ends the prompt: a recall, then its last token again */
    memcpy(toks + N - a->n_recall_marker, a->recall_marker, sizeof(triattn_token) * (size_t) a->n_recall_marker);
    int marks = 0;
    for (int32_t i = a->n_recall_marker; i <= N; i++) {
        marks += memcmp(toks + i - a->n_recall_marker, a->recall_marker, sizeof(triattn_token) * a->n_recall_marker) == 0;
    }
    /* a: one call; b: random calls, the cache's bound checked after each */
    CHECK(triattn_session_decode(a, toks, N, false) == TRIATTN_OK, "decode: %s", triattn_session_last_error(a));
    int bound_bad = 0;
    for (int32_t i = 0, n = 0; i < N; i += n) {
        const int32_t want = (int32_t) tu_int(1, 90);
        n = want < N - i ? want : N - i;
        CHECK(triattn_session_decode(b, toks + i, n, false) == TRIATTN_OK, "decode: %s", triattn_session_last_error(b));
        struct triattn_kv_stats st;
        triattn_session_kv_stats(b, &st);
        bound_bad += st.live_max > BUDGET + INTERVAL;
    }
    CHECK(bound_bad == 0, "the cache went past budget + interval %d times", bound_bad);
    struct triattn_kv_stats sa, sb;
    triattn_session_kv_stats(a, &sa);
    triattn_session_kv_stats(b, &sb);
    CHECK(sa.n_recalls == marks && sb.n_recalls == marks && sa.n_recalled > 0, "recalls %lld / %lld, markers %d, rows %lld",
          (long long) sa.n_recalls, (long long) sb.n_recalls, marks, (long long) sa.n_recalled);
    CHECK(sa.t2_rows > 0 && sa.t2_rows == sb.t2_rows && sa.t2_bytes > 0, "tier-2 rows %lld / %lld",
          (long long) sa.t2_rows, (long long) sb.t2_rows);
    /* every position is either in the cache or in tier 2 (nothing evicted is lost) */
    int lost = 0;
    for (int i = 0; i < a->kv.n_layer * a->kv.n_head_kv; i++) {
        const tri_t2_head * th = &a->kv.t2->heads[i];
        const int32_t * pos = tri_kv_pos(&a->kv, i / a->kv.n_head_kv, i % a->kv.n_head_kv);
        for (int32_t p = 0, j = 0; p < N; p++) {
            while (j < a->kv.n_live[i] && pos[j] < p) {
                j++;
            }
            lost += !(j < a->kv.n_live[i] && pos[j] == p) && !tri_kv_tier2_has(th, p);
        }
    }
    CHECK(lost == 0, "%d positions are in neither tier", lost);
    static int32_t pa[1 << 16], pb[1 << 16];
    int32_t na, nb;
    session_positions(a, pa, &na);
    session_positions(b, pb, &nb);
    CHECK(na == nb && memcmp(pa, pb, sizeof(int32_t) * (size_t) na) == 0, "one call and many calls hold other tokens");
    const size_t V = (size_t) info.n_vocab;
    CHECK(memcmp(triattn_session_logits(a, -1), triattn_session_logits(b, -1), sizeof(float) * V) == 0,
          "one call and many calls: last logits differ");

    /* save, load into a fresh session, continue both: the same logits */
    char path[512];
    tu_tmp_file(path, sizeof path, "test_recall.state");
    CHECK(triattn_session_save(a, path) == TRIATTN_OK, "save: %s", triattn_session_last_error(a));
    triattn_session * c = tu_session_recall(m, "triattention", NULL, -1, BUDGET, INTERVAL, 2048, 0, R);
    triattn_session * off = tu_session_recall(m, "triattention", NULL, -1, BUDGET, INTERVAL, 2048, 0, 0);
    if (c && off) {
        CHECK(triattn_session_load(c, path) == TRIATTN_OK, "load: %s", triattn_session_last_error(c));
        struct triattn_kv_stats sc;
        triattn_session_kv_stats(c, &sc);
        CHECK(sc.t2_rows == sa.t2_rows && sc.n_recalls == sa.n_recalls, "loaded tier 2: %lld rows, %lld recalls",
              (long long) sc.t2_rows, (long long) sc.n_recalls);
        CHECK(triattn_session_load(off, path) == TRIATTN_ERR_INVALID_ARG && strstr(triattn_session_last_error(off), "kv_recall"),
              "a recall-off session loaded tier-2 rows: %s", triattn_session_last_error(off));
        triattn_token more[40];
        marked_prompt(a, more, 40, 1, info.n_vocab);
        CHECK(triattn_session_decode(a, more, 40, false) == TRIATTN_OK && triattn_session_decode(c, more, 40, false) == TRIATTN_OK,
              "decode after load");
        CHECK(memcmp(triattn_session_logits(a, -1), triattn_session_logits(c, -1), sizeof(float) * V) == 0,
              "continued after load: logits differ");
    }
    triattn_session_free(c);
    triattn_session_free(off);
    remove(path);

    /* a generation recalls once its prompt is read; the manual call needs kv_recall */
    struct triattn_generate_params gp;
    triattn_generate_params_init(&gp);
    gp.max_tokens = 4;
    gp.sampling.temperature = 0.0f;
    triattn_session_reset(b);
    CHECK(triattn_generate(b, "In the beginning God created the heaven and the earth. And the earth was without form, "
                              "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
                              "the face of the waters. And God said, Let there be light: and there was light. And God "
                              "saw the light, that it was good: and God divided the light from the darkness.",
                           &gp, NULL, NULL, NULL) == TRIATTN_OK, "generate: %s", triattn_session_last_error(b));
    struct triattn_generate_result res;
    triattn_generate_get_result(b, &res);
    CHECK(b->recall_pos == res.n_prompt_tokens && b->n_recalls == 1, "recall at %d after a %d-token prompt (%lld recalls)",
          b->recall_pos, res.n_prompt_tokens, (long long) b->n_recalls);
    triattn_session * plain = tu_session(m, "triattention", BUDGET, INTERVAL, 2048, 0);
    if (plain) {
        CHECK(triattn_session_kv_recall(plain) == TRIATTN_ERR_INVALID_ARG, "manual recall without tier 2");
        triattn_session_free(plain);
    }
    triattn_session_free(a);
    triattn_session_free(b);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_quantize();
    test_pack7();
    test_tier2_row_bytes();
    test_tier2_store();
    test_compact_to_tier2();
    for (int i = 0; i < 4; i++) {
        test_recall_scores();
    }
    test_recall_swaps(TRI_KV_SHARE_NONE);
    test_recall_swaps(TRI_KV_SHARE_LAYERS);
    test_recall_swaps(TRI_KV_SHARE_ALL);
    triattn_model * m = tu_load_default_model("recall on the real model");
    if (m) {
        if (tu_inject_random_centres(m)) {
            test_sessions(m);
        }
        triattn_model_free(m);
    }
    return tu_finish();
}
