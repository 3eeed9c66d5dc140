"""A GPU reference point while atrous's TensorFlow cannot run on the lent GPU machine.

NOT atrous: the same architecture and work per image as atrous's default model
(ResNet-101 v1, output stride 16 through atrous units in the last block, 1x1 logits over 21
classes, bilinear upsampling with aligned corners to 513x513, argmax to uint8), written with
torchvision and timed with the seed's harness (burn-in, then timed batches, mean +- sd).  It
tells what this GPU can do for that workload, as a target for the TensorFlow numbers.

    python benchmarks/gpu_reference_torch.py [--batch-sizes 1,8,32] [--batches 20]
"""

import argparse
import contextlib
import statistics

import torch
import torchvision


def build(num_classes: int = 21) -> torch.nn.Module:
    backbone = torchvision.models.resnet101(weights=None,
                                            replace_stride_with_dilation=[False, False, True])
    features = torch.nn.Sequential(*list(backbone.children())[:-2])  # drop avgpool and fc

    class Segmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.logits = torch.nn.Conv2d(2048, num_classes, 1)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = self.logits(self.features(images))
            logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:],
                                                     mode="bilinear", align_corners=True)
            return logits.argmax(1).to(torch.uint8)

    return Segmenter().eval()


def time_forward(model: torch.nn.Module, batch: int, dtype: torch.dtype | None, *,
                 burn_in: int, batches: int, size: int = 513) -> tuple[float, float]:
    images = torch.rand(batch, 3, size, size, device="cuda").contiguous(
        memory_format=torch.channels_last)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    autocast = (torch.autocast("cuda", dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for step in range(burn_in + batches):
            start.record()
            model(images)
            stop.record()
            torch.cuda.synchronize()
            if step >= burn_in:
                times.append(start.elapsed_time(stop) / 1000)
    return statistics.mean(times), statistics.pstdev(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--burn-in", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    model = build().cuda().to(memory_format=torch.channels_last)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    print("| precision | batch | s/batch (mean ± sd) | images/s |\n|---|---|---|---|")
    for name, dtype, tf32 in (("fp32 (TF32 off)", None, False), ("fp32 (TF32 on)", None, True),
                              ("fp16 autocast", torch.float16, False),
                              ("bf16 autocast", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            mean, sd = time_forward(model, batch, dtype, burn_in=args.burn_in,
                                    batches=args.batches)
            print(f"| {name} | {batch} | {mean:.4f} ± {sd:.4f} | {batch / mean:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
