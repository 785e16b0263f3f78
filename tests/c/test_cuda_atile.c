/* The CUDA tensor-core attention (cuda/atile.h), compiled for the host: blocks of the kernel (cuda/attention.cu,
 * tri_cu_att_mma_kernel) run as their warps' 32 lanes calling atile.h's functions around an mma emulated from PTX's
 * m16n8k16 fp16 fragment layout, the four-lane reductions taken across the emulated lanes, over a random chunk of
 * one session's rows split into random parts; the parts merged as the merge kernel does (amerge.h, its lanes
 * emulated) are checked against float64 attention of every (token, query head) over its visible slots; and the
 * merge alone over up to 128 parts. Slots past the visible ones hold NaN and inf: a tile must neither read nor
 * weigh them. Random shapes, fresh each run; TRI_TEST_SEED replays. */
#include "amerge.h"
#include "atile.h"
#include "fp16.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ptx_mma.h"
#include "test_util.h"

#define WARPS 4                /* warps of the kernel's block (attention.cu: TRI_ATT_MMA_WARPS) */
#define FB (WARPS * TRI_AT_ROWS) /* flat rows of a block */
#define NT (TRI_AT_SLOTS / 8)  /* n-tiles of a score tile */
#define DMAX 128

/* c[l] += A B over the warp's fragments (PTX m16n8k16, fp16 inputs, fp32 accumulators). */
static void emulate_hmma(uint32_t a[32][4], uint32_t b[32][2], float * c[32]) {
    const uint32_t * fa[32], * fb[32];
    for (int l = 0; l < 32; l++) {
        fa[l] = a[l];
        fb[l] = b[l];
    }
    for (int l = 0; l < 32; l++) {
        tri_ptx_hmma_lane(fa, fb, l, c[l]);
    }
}

typedef struct chunk {
    int n, G, Hkv, D, cap, live, parts;
    float scale;
    const float * q;          /* [n][Hkv * G][D] */
    const uint16_t * K, * V;  /* [Hkv][cap][D] fp16 */
    const int * rank;         /* [n] */
    float * part;             /* [n][H][parts][D + 2] */
} chunk;

static int visible(const chunk * c, int t) {
    const int v = c->live + c->rank[t] + 1;
    return v < c->cap ? v : c->cap;
}

/* Block (p, h, z) of the kernel, warp by warp, lane by lane. */
static void run_block(const chunk * c, int p, int h, int z, uint16_t * Ks, uint16_t * Vt) {
    const int G = c->G, H = c->Hkv * G, D = c->D, nf = c->n * G, f0 = z * FB;
    const uint16_t * K = c->K + (size_t) h * c->cap * D, * V = c->V + (size_t) h * c->cap * D;
    const int last = (f0 + FB < nf ? f0 + FB : nf) - 1;
    int j0, j1;
    tri_at_range(visible(c, last / G), c->parts, p, &j0, &j1);
    static uint32_t qa[WARPS][32][DMAX / 16][4];
    static float o[WARPS][32][DMAX / 8][4], s[WARPS][32][NT][4];
    static tri_at_run run[WARPS][32];
    static int lim[WARPS][32][2], wlim[WARPS];
    static float * outp[WARPS][32][2];
    for (int w = 0; w < WARPS; w++) {
        const int fw = f0 + w * TRI_AT_ROWS;
        for (int l = 0; l < 32; l++) {
            const float * qr[2] = { NULL, NULL };
            for (int r = 0; r < 2; r++) {
                const int f = fw + l / 4 + 8 * r;
                lim[w][l][r] = 0;
                outp[w][l][r] = NULL;
                if (f < nf) {
                    const int t = f / G, hq = h * G + f % G;
                    qr[r] = c->q + ((size_t) t * H + hq) * D;
                    lim[w][l][r] = visible(c, t) < j1 ? visible(c, t) : j1;
                    outp[w][l][r] = c->part + (((size_t) t * H + hq) * c->parts + p) * (D + 2);
                }
            }
            for (int ks = 0; ks < D / 16; ks++) {
                tri_at_q_frag(qr[0], qr[1], ks, l, c->scale, qa[w][l][ks]);
            }
            run[w][l] = (tri_at_run) { { -INFINITY, -INFINITY }, { 0.0f, 0.0f } };
            memset(o[w][l], 0, sizeof o[w][l]);
        }
        const int fl = (fw + TRI_AT_ROWS < nf ? fw + TRI_AT_ROWS : nf) - 1;
        wlim[w] = fl >= fw ? (visible(c, fl / G) < j1 ? visible(c, fl / G) : j1) : 0;
    }
    for (int jt = j0; jt < j1; jt += TRI_AT_SLOTS) {
        const int n = j1 - jt < TRI_AT_SLOTS ? j1 - jt : TRI_AT_SLOTS;
        for (int tid = 0; tid < WARPS * 32; tid++) {
            tri_at_load(K, V, jt, n, D, tid, WARPS * 32, Ks, Vt);
        }
        for (int w = 0; w < WARPS; w++) {
            if (jt >= wlim[w]) {
                continue;
            }
            uint32_t b[32][2];
            float * acc[32];
            memset(s[w], 0, sizeof s[w]);
            for (int ks = 0; ks < D / 16; ks++) {
                for (int nt = 0; nt < NT; nt++) {
                    uint32_t a[32][4];
                    for (int l = 0; l < 32; l++) {
                        memcpy(a[l], qa[w][l][ks], sizeof a[l]);
                        tri_at_k_frag(Ks, D, nt, ks, l, b[l]);
                        acc[l] = s[w][l][nt];
                    }
                    emulate_hmma(a, b, acc);
                }
            }
            float mx[32][2];
            for (int l = 0; l < 32; l++) {
                tri_at_mask_max(s[w][l], jt, lim[w][l], l, mx[l]);
            }
            for (int l = 0; l < 32; l++) { /* the four lanes of a row (shuffles over lane bits 0 and 1) */
                for (int r = 0; r < 2; r++) {
                    float m = -INFINITY;
                    for (int u = 0; u < 4; u++) {
                        m = fmaxf(m, mx[(l & ~3) + u][r]);
                    }
                    mx[l][r] = m; /* lanes below l already hold the quad's maximum: the same value */
                }
            }
            uint32_t pf[32][TRI_AT_SLOTS / 16][4];
            for (int l = 0; l < 32; l++) {
                float corr[2];
                tri_at_softmax(s[w][l], mx[l], &run[w][l], corr, pf[l]);
                tri_at_rescale(o[w][l], D / 8, corr);
            }
            for (int kk = 0; kk < TRI_AT_SLOTS / 16; kk++) {
                for (int dt = 0; dt < D / 8; dt++) {
                    uint32_t a[32][4];
                    for (int l = 0; l < 32; l++) {
                        memcpy(a[l], pf[l][kk], sizeof a[l]);
                        tri_at_v_frag(Vt, dt, kk, l, b[l]);
                        acc[l] = o[w][l][dt];
                    }
                    emulate_hmma(a, b, acc);
                }
            }
        }
    }
    for (int w = 0; w < WARPS; w++) {
        float lsum[32][2];
        for (int l = 0; l < 32; l++) {
            for (int r = 0; r < 2; r++) {
                lsum[l][r] = 0.0f;
                for (int u = 0; u < 4; u++) {
                    lsum[l][r] += run[w][(l & ~3) + u].l[r];
                }
            }
        }
        for (int l = 0; l < 32; l++) {
            run[w][l].l[0] = lsum[l][0];
            run[w][l].l[1] = lsum[l][1];
            for (int r = 0; r < 2; r++) {
                if (outp[w][l][r]) {
                    tri_at_store(outp[w][l][r], (const float (*)[4]) o[w][l], D, r, &run[w][l], l);
                }
            }
        }
    }
}

/* One random chunk: every block of the kernel's grid, the parts merged, against float64. */
/* The merge kernel's warp over one head's parts (pr: [parts][D + 2]) into out[D]: its 32 lanes call amerge.h's
 * functions, the warp's max / last-part / sum reductions taken across the emulated lanes. */
static void merge_head(const float * pr, int parts, int D, float * out) {
    float m[32][TRI_AM_PARTS_LANE], l[32][TRI_AM_PARTS_LANE], lmx[32], w[32 * TRI_AM_PARTS_LANE];
    int llast[32];
    float mx = -INFINITY, t = 0.0f;
    int used = 0;
    for (int lane = 0; lane < 32; lane++) {
        tri_am_lane_parts(pr, parts, D, lane, m[lane], l[lane], &lmx[lane], &llast[lane]);
        mx = fmaxf(mx, lmx[lane]);
        used = llast[lane] > used ? llast[lane] : used;
    }
    for (int p = 0; p < 32 * TRI_AM_PARTS_LANE; p++) {
        w[p] = NAN; /* unwritten weights must not be read */
    }
    for (int lane = 0; lane < 32; lane++) {
        t += tri_am_lane_weights(m[lane], l[lane], mx, used, lane, w);
    }
    const float inv = t > 0.0f ? 1.0f / t : 0.0f;
    for (int d = 0; d < D; d++) {
        out[d] = tri_am_column(pr + d, w, used, D, inv);
    }
}

static void test_chunk(void) {
    chunk c;
    c.D = tu_below(2) ? 64 : 128;
    c.G = (int) tu_int(1, 8);
    c.Hkv = (int) tu_int(1, 2);
    c.n = (int) tu_int(1, 90);
    c.live = tu_below(4) == 0 ? 0 : (int) tu_int(0, 400);
    c.cap = c.live + c.n + (int) tu_int(0, 100);
    if (tu_below(4) == 0) { /* a full cache: the last rows see only cap slots */
        c.cap = c.live + (int) tu_int(1, c.n);
    }
    c.parts = tu_below(3) == 0 ? 1 : (int) tu_int(2, 12);
    c.scale = 1.0f / sqrtf((float) c.D);
    const int H = c.Hkv * c.G, D = c.D;
    float * q = malloc(sizeof(float) * c.n * H * D);
    uint16_t * K = malloc(sizeof(uint16_t) * c.Hkv * c.cap * D), * V = malloc(sizeof(uint16_t) * c.Hkv * c.cap * D);
    int * rank = malloc(sizeof(int) * c.n);
    float * part = malloc(sizeof(float) * c.n * H * c.parts * (D + 2));
    for (int i = 0; i < c.n * H * D; i++) {
        q[i] = 2.0f * (float) tu_normal();
    }
    for (int h = 0; h < c.Hkv; h++) {
        for (int j = 0; j < c.cap; j++) {
            const int max_seen = c.live + c.n < c.cap ? c.live + c.n : c.cap;
            for (int d = 0; d < D; d++) {
                const size_t i = ((size_t) h * c.cap + j) * D + d;
                if (j < max_seen) {
                    K[i] = tri_fp32_to_fp16((float) tu_normal());
                    V[i] = tri_fp32_to_fp16((float) tu_normal());
                } else { /* never written: any bits */
                    K[i] = (d & 1) ? 0x7e00u : 0x7c00u;
                    V[i] = (d & 1) ? 0x7c00u : 0x7e00u;
                }
            }
        }
    }
    for (int t = 0; t < c.n; t++) {
        rank[t] = t;
    }
    for (size_t i = 0; i < (size_t) c.n * H * c.parts * (D + 2); i++) {
        part[i] = NAN; /* every (row, head, part) must be written */
    }
    c.q = q;
    c.K = K;
    c.V = V;
    c.rank = rank;
    c.part = part;
    static uint16_t Ks[TRI_AT_SLOTS * TRI_AT_KLD(DMAX)], Vt[DMAX * TRI_AT_VLD];
    const int blocks = (c.n * c.G + FB - 1) / FB;
    for (int z = 0; z < blocks; z++) {
        for (int h = 0; h < c.Hkv; h++) {
            for (int p = 0; p < c.parts; p++) {
                run_block(&c, p, h, z, Ks, Vt);
            }
        }
    }
    double worst = 0.0;
    long unwritten = 0;
    double * sc = malloc(sizeof(double) * c.cap);
    for (int t = 0; t < c.n; t++) {
        for (int hq = 0; hq < H; hq++) {
            const int h = hq / c.G, nv = visible(&c, t);
            const float * qr = q + ((size_t) t * H + hq) * D;
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j < nv; j++) {
                double dot = 0.0;
                for (int d = 0; d < D; d++) {
                    dot += (double) qr[d] * tri_fp16_to_fp32(K[((size_t) h * c.cap + j) * D + d]);
                }
                sc[j] = dot * c.scale;
                mx = tu_max(mx, sc[j]);
            }
            for (int j = 0; j < nv; j++) {
                sum += exp(sc[j] - mx);
            }
            /* the parts merged as the merge kernel does (amerge.h) */
            const float * pr = part + ((size_t) t * H + hq) * c.parts * (D + 2);
            for (int p = 0; p < c.parts; p++) {
                unwritten += isnan(pr[p * (D + 2) + D]) || isnan(pr[p * (D + 2) + D + 1]);
            }
            float got[DMAX];
            merge_head(pr, c.parts, D, got);
            for (int d = 0; d < D; d++) {
                double want = 0.0;
                for (int j = 0; j < nv; j++) {
                    want += exp(sc[j] - mx) / sum * tri_fp16_to_fp32(V[((size_t) h * c.cap + j) * D + d]);
                }
                worst = isnan(got[d]) ? INFINITY : tu_max(worst, fabs(got[d] - want));
            }
        }
    }
    /* fp16 Q (relative rounding 2^-11 on scores of a few units) and fp16 weights: up to about 2.5e-3 on values
     * ~N(0, 1) over 1,800 random chunks */
    CHECK(worst < 6e-3 && unwritten == 0, "chunk of %d rows, %d/%d heads, D %d, %d live of %d slots, %d parts: error "
          "%.3g, %ld (row, part) statistics unwritten", c.n, H, c.Hkv, D, c.live, c.cap, c.parts, worst, unwritten);
    printf("  %3d rows, %2d/%d heads, D %3d, %3d live of %3d slots, %2d parts: error %.2g\n", c.n, H, c.Hkv, D,
           c.live, c.cap, c.parts, worst);
    free(q);
    free(K);
    free(V);
    free(rank);
    free(part);
    free(sc);
}

/* The merge alone, as the decode kernel's parts leave it: random scores and values over nv slots split into whole
 * 64-slot ranges (tri_at_range: up to 128 parts, the trailing ones empty, their accumulators garbage) or, a third of
 * the time, at random cuts (empty parts anywhere), each part's (acc, m, l) in float, merged (amerge.h) against
 * float64 softmax attention over all the slots. */
static void test_merge(void) {
    const int D = 16 * (int) tu_int(1, 16), nv = (int) tu_int(1, 5000);
    const int parts = tu_below(3) == 0 ? (int) tu_int(1, 8) : (int) tu_int(9, 32 * TRI_AM_PARTS_LANE);
    double * sc = malloc(sizeof(double) * nv), * v = malloc(sizeof(double) * nv * D);
    float * pr = malloc(sizeof(float) * parts * (D + 2)), out[256];
    const double spread = tu_below(2) ? 1.0 : 8.0; /* flat or peaked weights */
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < nv; j++) {
        sc[j] = spread * tu_normal();
        mx = tu_max(mx, sc[j]);
        for (int d = 0; d < D; d++) {
            v[(size_t) j * D + d] = tu_normal();
        }
    }
    for (int j = 0; j < nv; j++) {
        sum += exp(sc[j] - mx);
    }
    int * cut = malloc(sizeof(int) * (parts + 1)); /* part p: slots cut[p] .. cut[p + 1] - 1 */
    const bool random_cuts = tu_below(3) == 0;
    for (int p = 0; p <= parts; p++) {
        int j0, j1;
        tri_at_range(nv, parts, p < parts ? p : parts - 1, &j0, &j1);
        cut[p] = random_cuts ? (int) tu_int(0, nv) : p < parts ? j0 : j1;
    }
    if (random_cuts) { /* sorted, from 0 to nv */
        cut[0] = 0;
        cut[parts] = nv;
        for (int i = 1; i < parts; i++) {
            for (int k = i; k > 1 && cut[k - 1] > cut[k]; k--) {
                const int x = cut[k];
                cut[k] = cut[k - 1];
                cut[k - 1] = x;
            }
        }
    }
    for (int p = 0; p < parts; p++) {
        const int j0 = cut[p], j1 = cut[p + 1];
        float * pp = pr + (size_t) p * (D + 2);
        float pm = -INFINITY, pl = 0.0f;
        for (int j = j0; j < j1; j++) {
            pm = fmaxf(pm, (float) sc[j]);
        }
        for (int d = 0; d < D; d++) {
            pp[d] = j0 < j1 ? 0.0f : NAN; /* an empty part's accumulators are never read */
        }
        for (int j = j0; j < j1; j++) {
            const float e = expf((float) sc[j] - pm);
            pl += e;
            for (int d = 0; d < D; d++) {
                pp[d] += e * (float) v[(size_t) j * D + d];
            }
        }
        pp[D] = pm;
        pp[D + 1] = pl;
    }
    merge_head(pr, parts, D, out);
    double worst = 0.0;
    for (int d = 0; d < D; d++) {
        double want = 0.0;
        for (int j = 0; j < nv; j++) {
            want += exp(sc[j] - mx) / sum * v[(size_t) j * D + d];
        }
        worst = isnan(out[d]) ? INFINITY : tu_max(worst, fabs(out[d] - want));
    }
    CHECK(worst < 1e-4, "merge of %d parts over %d slots (%s), D %d: error %.3g", parts, nv,
          random_cuts ? "random cuts" : "whole tiles", D, worst);
    free(cut);
    free(sc);
    free(v);
    free(pr);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    for (int rep = 0; rep < 12; rep++) {
        test_chunk();
    }
    for (int rep = 0; rep < 200; rep++) {
        test_merge();
    }
    /* the fp16 pairs: round to nearest even, low half first */
    for (int i = 0; i < 1000; i++) {
        const float a = (float) tu_normal() * 100.0f, b = (float) tu_normal() * 1e-3f;
        const uint32_t w = tri_at_pack(a, b);
        CHECK((w & 0xffffu) == tri_fp32_to_fp16(a) && (w >> 16) == tri_fp32_to_fp16(b), "pack(%g, %g)", a, b);
    }
    return tu_finish();
}
