"""scalestyle: style-personalized text-to-image generation with scale-wise autoregressive models.

The backbone follows FoundationVision/Infinity (bitwise next-scale prediction, BSQ multi-scale VAE,
Flan-T5 text encoder); `../shared/research/infinity_spec.md` in the development tree is the spec it is
written against.

Glossary of the letters that suffix tensor names (``x_BLC``, ``bits_BhwD``):

    B  batch rows (for CFG: conditional rows first, then unconditional rows)
    L  image tokens (all scales concatenated, or the current scale's)
    K  keys in attention (cache plus current scale)
    N  packed text tokens of a batch (sum of caption lengths); all B*h*w tokens of a VAR scale
    T  text tokens of one padded caption
    C  transformer width            H  attention heads        c  head dim (C / H)
    E  text-encoder width (2048 for Flan-T5-XL)
    D  bits per token seen by the transformer (VAE codebook dim, x4 with spatial patchify; VAR: Cvae)
    d  VAE latent channels (codebook dim; VAR's Cvae, 32)
    h, w  token grid of one scale     Hl, Wl  the last (full) latent grid
    S  scales                         P  image pixels side (as in ``img_B3PP``)
    V  logits per token (2 * D; for VAR the codebook size V, 4096)
"""

__version__ = "0.1.0"
