"""Compile Triton kernels to cubins for sm_80/86/89/90, without a GPU, each within the shared memory a block may
have on an RTX 30xx/40xx.

Run as a script in a process where ``TRITON_INTERPRET`` is not set (the interpreter replaces
``triton.jit`` functions); prints one JSON object mapping ``"<variant>@sm_<arch>"`` to ``"ok"``
or the compiler's error.

* ``python tests/compile_kernels.py``: the fused block's and the losses' kernels, in the
  variants listed below (their GPU tiles differ from the interpreter's, so they are listed by
  hand). Variants are spread over the four architectures so that every architecture and every
  kernel is compiled at least once, and the main conv forward on all four.
* ``python tests/compile_kernels.py --launches FILE``: the specialisations recorded from
  interpreted launches by ``tests/triton_launches.py`` (kernels whose tiles are the same on a
  GPU): each specialisation on one architecture in turn, and each kernel's first
  specialisation on all four.
"""
import importlib
import json
import sys

import triton
import triton.language as tl

from c2w_fast.kernels import conv_norm_act as conv
from c2w_fast.kernels import segmentation_loss as loss

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (80, 86, 89, 90)
# the most shared memory one block may have (opt-in) on the smallest of these, sm_86/89 (RTX 30xx/40xx, A10, L4),
# in bytes; the A100 and H100 allow more, but a variant compiled for them here must also run on those cards
SHARED_LIMIT = 101376
TYPES = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}


def _conv_variant(dtype, epilogue, kernel, stride, block_n, block_k, even, block_v, warps):
    pointer = "*" + dtype
    types = dict(src_ptr=pointer, w_ptr=pointer, dst_ptr=pointer, part_ptr="*fp32", grad_ptr=pointer, res_ptr=pointer,
                 stats_ptr="*fp32", gamma_ptr="*fp32", beta_ptr="*fp32", negative_slope="fp32")
    constants = dict(KZ=kernel[0], KY=kernel[1], KX=kernel[2], SZ=stride[0], SY=stride[1], SX=stride[2],
                     TRANSPOSED=epilogue == conv.EPILOGUE_STORE, EPILOGUE=epilogue, HAS_RESIDUAL=True,
                     ACTIVATION=True, EVEN_K=even, DOT_DTYPE=TYPES[dtype],
                     DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32", STAT_ROWS=conv.STAT_ROWS_GPU,
                     BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_V=block_v)
    return conv._conv_kernel, types, constants, warps


def _weight_grad_variant(dtype, block_n, block_k, even, block_v, warps):
    types = dict(x_ptr="*" + dtype, g_ptr="*" + dtype, part_ptr="*fp32")
    constants = dict(KZ=3, KY=3, KX=3, SZ=1, SY=2, SX=2, EVEN_K=even, DOT_DTYPE=TYPES[dtype],
                     DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32", BLOCK_N=block_n, BLOCK_K=block_k,
                     BLOCK_V=block_v)
    return conv._weight_grad_kernel, types, constants, warps


def _pointwise_variants(dtype):
    pointer = "*" + dtype
    affine = dict(stats_ptr="*fp32", gamma_ptr="*fp32", beta_ptr="*fp32", negative_slope="fp32")
    flags = dict(HAS_RESIDUAL=True, ACTIVATION=True, BLOCK_V=64, BLOCK_C=32)
    return [
        (conv._combine_partials_kernel, dict(part_ptr="*fp32", out_ptr="*fp32", eps="fp32"),
         dict(MOMENTS=True, FINAL=False, BLOCK_R=32, BLOCK_C=32), 4),
        (conv._combine_partials_kernel, dict(part_ptr="*fp32", out_ptr="*fp32", eps="fp32"),
         dict(MOMENTS=True, FINAL=True, BLOCK_R=32, BLOCK_C=32), 4),
        (conv._normalize_kernel, dict(y_ptr=pointer, res_ptr=pointer, **affine), flags, 4),
        (conv._normalize_backward_kernel,
         dict(buf_ptr=pointer, grad_ptr=pointer, res_ptr=pointer, dres_ptr=pointer, sums_ptr="*fp32", **affine),
         dict(WRITE_DRES=True, **flags), 4),
    ]


def _loss_variants(dtype, term, sigmoid):
    pointer = "*" + dtype
    flags = dict(LABELS=True, HAS_MASK=True, SIGMOID=sigmoid, TERM=term, HAS_ALPHA=True, TERM_FIRST_CLASS=1,
                 BLOCK_C=4, BLOCK_N=512)
    inputs = dict(logits_ptr=pointer, target_ptr="*i64", mask_ptr="*u8", gamma="fp32", alpha="fp32")
    return [
        (loss._loss_forward_kernel, dict(part_ptr="*fp32", **inputs), flags, 8),
        (loss._loss_backward_kernel, dict(coef_ptr="*fp32", out_ptr="*fp32", grad_out_ptr="*fp32", grad_ptr=pointer,
                                          **inputs), flags, 8),
    ]


VARIANTS = {
    "conv_forward_3x3x3_groups_bf16": _conv_variant("bf16", conv.EPILOGUE_MOMENTS, (3, 3, 3), (1, 1, 1), 16, 16, True,
                                                    256, 8),
    "conv_recompute_1x3x3_fp16": _conv_variant("fp16", conv.EPILOGUE_GRAD_SUMS, (1, 3, 3), (1, 1, 1), 32, 32, True,
                                               64, 4),
    "conv_input_grad_stride122_bf16": _conv_variant("bf16", conv.EPILOGUE_STORE, (1, 3, 3), (1, 2, 2), 16, 16, True,
                                                    128, 4),
    "conv_forward_uneven_fp32": _conv_variant("fp32", conv.EPILOGUE_MOMENTS, (3, 3, 3), (2, 2, 2), 32, 16, False,
                                              64, 2),
    "weight_grad_bf16": _weight_grad_variant("bf16", 16, 16, True, 64, 4),
    "weight_grad_fp32_uneven": _weight_grad_variant("fp32", 32, 32, False, 32, 4),
    "norm_kernels_bf16": _pointwise_variants("bf16"),
    "loss_focal_softmax_bf16": _loss_variants("bf16", loss.TERM_FOCAL, False),
    "loss_ce_sigmoid_fp32": _loss_variants("fp32", loss.TERM_CE, True),
    "loss_finalize": [(loss._loss_finalize_kernel,
                       dict(part_ptr="*fp32", out_ptr="*fp32", coef_ptr="*fp32", smooth_nr="fp32", smooth_dr="fp32",
                            lambda_dice="fp32", lambda_term="fp32"),
                       dict(DICE_FIRST_CLASS=1, BATCH_DICE=True, BLOCK_B=4, BLOCK_P=64, BLOCK_C=4), 4)],
}
PAIRS = [(name, ARCHS[i % len(ARCHS)]) for i, name in enumerate(VARIANTS)]
PAIRS += [("conv_forward_3x3x3_groups_bf16", arch) for arch in ARCHS if ("conv_forward_3x3x3_groups_bf16", arch)
          not in PAIRS]


def _compile(kernel, types, constants, warps, arch):
    signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=3))


def _recorded_variants(path: str) -> dict[str, list]:
    """Compile jobs of the launches recorded in ``path``, keyed by kernel name and specialisation."""
    variants = {}
    for i, launch in enumerate(json.loads(open(path).read())):
        kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
        while not isinstance(kernel, triton.runtime.jit.JITFunction):  # autotune / heuristics wrappers
            kernel = kernel.fn
        constants = {k: tl.dtype(v["dtype"]) if isinstance(v, dict) else v for k, v in launch["constants"].items()}
        name = f"{launch['module'].rsplit('.', 1)[-1]}.{launch['name']}#{i}"
        variants[name] = [(kernel, launch["types"], constants, launch["options"].get("num_warps", 4))]
    return variants


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--launches":
        variants_by_name = _recorded_variants(sys.argv[2])
        # each specialisation on one architecture in turn, each kernel's first one on all four
        pairs = [(name, ARCHS[i % len(ARCHS)]) for i, name in enumerate(variants_by_name)]
        firsts = {name.split("#")[0]: name for name in reversed(list(variants_by_name))}
        pairs += [(name, arch) for name in firsts.values() for arch in ARCHS if (name, arch) not in pairs]
    else:
        variants_by_name, pairs = VARIANTS, PAIRS
    results = {}
    for name, arch in pairs:
        variants = variants_by_name[name]
        try:
            for kernel, types, constants, warps in variants if isinstance(variants, list) else [variants]:
                compiled = _compile(kernel, types, constants, warps, arch)
                if not compiled.asm.get("cubin"):
                    raise RuntimeError("no cubin produced")
                if compiled.metadata.shared > SHARED_LIMIT:  # a launch on an RTX 30xx/40xx would fail
                    raise RuntimeError(f"{compiled.metadata.shared} bytes of shared memory, more than the "
                                       f"{SHARED_LIMIT} a block may have on sm_86/89")
            results[f"{name}@sm_{arch}"] = "ok"
        except Exception as exc:  # report every failure, not just the first
            results[f"{name}@sm_{arch}"] = f"{type(exc).__name__}: {exc}"[:2000]
    print(json.dumps(results))
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
