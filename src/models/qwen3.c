/* qwen3: Qwen3 dense. Per-head RMSNorm of q and k before RoPE, no biases, RoPE on half-split pairs. */
#include "../forward.h"

static enum triattn_status qwen3_load_layer(struct triattn_model * m, int il, char * err, size_t n) {
    return tri_model_bind_layer(m, il, /*qkv_bias=*/false, /*qk_norm=*/true, err, n);
}

static void qwen3_build_layer(tri_forward * f, int il) {
    const tri_layer * L = &f->m->w.layers[il];
    tri_blk_rmsnorm(f, f->x, &L->attn_norm, f->xn);
    tri_blk_qkv(f, L);
    tri_blk_qk_norm(f, L); /* q as the pre-RoPE query statistics see it */
    tri_blk_rope_store(f, il);
    tri_blk_attention(f, il);
    tri_blk_attn_out(f, L);
    tri_blk_rmsnorm(f, f->x, &L->ffn_norm, f->xn);
    tri_blk_ffn_swiglu(f, L);
}

const tri_arch tri_arch_qwen3 = {
    .name         = "qwen3",
    .rope_pairing = TRI_ROPE_HALF,
    .load_hparams = NULL,
    .load_layer   = qwen3_load_layer,
    .build_layer  = qwen3_build_layer,
};
