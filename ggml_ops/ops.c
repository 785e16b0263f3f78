#include "ops.h"
#include "arch/ops_kernels.h"

#include <math.h>
#include <string.h>

void tri_rmsnorm(const float * x, const float * w, float * y, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        ss += (double) x[i] * x[i];
    }
    const float r = (float) (1.0 / sqrt(ss / n + eps));
    if (w) {
        for (int i = 0; i < n; i++) {
            y[i] = x[i] * r * w[i];
        }
    } else {
        for (int i = 0; i < n; i++) {
            y[i] = x[i] * r;
        }
    }
}

void tri_rope(float * x, int n_heads, int head_dim, int rope_dim, const float * cs, enum tri_rope_pairing pairing) {
    const int F = rope_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float * v = x + (int64_t) h * head_dim;
        for (int f = 0; f < F; f++) {
            const int a = pairing == TRI_ROPE_ADJACENT ? 2 * f : f;
            const int b = pairing == TRI_ROPE_ADJACENT ? 2 * f + 1 : f + F;
            const float c = cs[2 * f], s = cs[2 * f + 1];
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

void tri_silu_mul(float * g, const float * u, int n) {
    for (int i = 0; i < n; i++) {
        const float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

void tri_gelu_mul(float * g, const float * u, int n) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int i = 0; i < n; i++) {
        const float v = g[i];
        g[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))) * u[i];
    }
}

void tri_attn_scores_q_ref(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                           float * const * s) {
    for (int j = 0; j < n; j++) {
        const tri_fp16 * k = K + (int64_t) j * D;
        for (int g = 0; g < nq; g++) {
            float acc = 0.0f;
            for (int d = 0; d < D; d++) {
                acc += q[g][d] * tri_fp16_to_fp32(k[d]);
            }
            s[g][j] = acc * scale;
        }
    }
}

void tri_attn_accum_q_ref(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc) {
    for (int j = 0; j < n; j++) {
        const tri_fp16 * v = V + (int64_t) j * D;
        for (int g = 0; g < nq; g++) {
            const float w = p[g][j];
            if (w == 0.0f) {
                continue;
            }
            for (int d = 0; d < D; d++) {
                acc[g][d] += w * tri_fp16_to_fp32(v[d]);
            }
        }
    }
}

void tri_attn_scores_ref(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls) {
    for (int g = 0; g < G; g++) {
        const float * qg = q + (int64_t) g * D;
        float *       sg = s + (int64_t) g * ls;
        tri_attn_scores_q_ref(D, 1, &qg, K, n, scale, &sg);
    }
}

void tri_attn_accum_ref(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc) {
    for (int g = 0; g < G; g++) {
        const float * pg = p + (int64_t) g * lp;
        float *       ag = acc + (int64_t) g * D;
        tri_attn_accum_q_ref(D, 1, &pg, V, n, &ag);
    }
}

float tri_max_ref(const float * s, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        mx = s[j] > mx ? s[j] : mx;
    }
    return mx;
}

float tri_exp_sum_ref(float * s, int n, float max) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - max);
        sum += s[j];
    }
    return sum;
}

void tri_f32_to_f16_row(const float * x, tri_fp16 * y, int n) {
    for (int i = 0; i < n; i++) {
        y[i] = tri_fp32_to_fp16(x[i]);
    }
}

tri_attn_kernels tri_attn_kernels_get(enum tri_isa isa) {
    tri_attn_kernels k = { tri_attn_scores_ref, tri_attn_accum_ref, tri_exp_sum_ref, tri_attn_scores_q_ref,
                           tri_attn_accum_q_ref, tri_max_ref };
    if (isa == TRI_ISA_COUNT) {
        isa = tri_cpu_isa();
    }
    if (!tri_cpu_has_isa(isa)) {
        memset(&k, 0, sizeof k);
        return k;
    }
    if (isa == TRI_ISA_NEON) {
        k.scores   = tri_attn_scores_neon;
        k.accum    = tri_attn_accum_neon;
        k.scores_q = tri_attn_scores_q_neon;
        k.accum_q  = tri_attn_accum_q_neon;
        k.exp_sum  = tri_exp_sum_neon;
        k.max      = tri_max_neon;
        return k;
    }
    if (isa != TRI_ISA_AVX2 && isa != TRI_ISA_AVX512) {
        return k;
    }
    k.exp_sum = tri_exp_sum_avx2;
    k.max     = tri_max_avx2;
    if (isa == TRI_ISA_AVX512) { /* 32 registers: more queries share each K/V vector */
        k.scores   = tri_attn_scores_avx512;
        k.accum    = tri_attn_accum_avx512;
        k.scores_q = tri_attn_scores_q_avx512;
        k.accum_q  = tri_attn_accum_q_avx512;
    } else {
        k.scores   = tri_attn_scores_avx2;
        k.accum    = tri_attn_accum_avx2;
        k.scores_q = tri_attn_scores_q_avx2;
        k.accum_q  = tri_attn_accum_q_avx2;
    }
    return k;
}

tri_act_kernels tri_act_kernels_get(enum tri_isa isa) {
    tri_act_kernels k = { tri_silu_mul, tri_gelu_mul };
    if (isa == TRI_ISA_COUNT) {
        isa = tri_cpu_isa();
    }
    if ((isa == TRI_ISA_AVX2 || isa == TRI_ISA_AVX512) && tri_cpu_has_isa(isa)) {
        k.silu_mul = tri_silu_mul_avx2;
        k.gelu_mul = tri_gelu_mul_avx2;
    } else if (isa == TRI_ISA_NEON && tri_cpu_has_isa(isa)) {
        k.silu_mul = tri_silu_mul_neon;
        k.gelu_mul = tri_gelu_mul_neon;
    }
    return k;
}
