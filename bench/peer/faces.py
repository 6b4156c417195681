#!/usr/bin/env python3
"""dlib reference for `cargo xtask bench --only faces --peer`: face_recognition on dlib.

Times, per image, what face_recognition does with dlib's three public models, on photos loaded
as face_recognition loads them (`face_recognition.load_image_file`: PIL, converted to RGB):

- detect:  `face_locations(img, number_of_times_to_upsample=1, model="cnn")` (the MMOD CNN,
           image upsampled once);
- full:    that, then `face_encodings(img, known_face_locations=those)` (5-point landmarks,
           aligned chip, ResNet descriptor, no jitter): detection + landmarks + encoding;
- encode:  `face_encodings(img, known_face_locations=...)` alone (landmarks + chip + encoding
           of the faces detection found), reported beside the others;
- chips:   encoding alone on a batch of 150x150 chips:
           `dlib.face_recognition_model_v1(...).compute_face_descriptor(chips)` (the batch API,
           one call for the whole list), per chip.

Models are loaded, and one small image detected and encoded, before anything is timed. Each
stage passes over every image `--passes` times; the medians of the passes are reported, as wall
seconds and as CPU seconds of the whole process (`time.process_time`, every thread), which a
busy machine disturbs less. With
`--rss IMAGE` it instead detects and encodes every face of that one photo and reports the
process's peak resident set (`ru_maxrss`), which is what `siamese identify --faces all` is
compared with.

Prints one JSON object on stdout:

    {"images": N, "faces": F, "chips": C, "passes": P,
     "detect_seconds_per_image": ..., "full_seconds_per_image": ...,
     "encode_seconds_per_image": ..., "chip_seconds_per_chip": ...,
     "detect_cpu_seconds_per_image": ..., (and full_, encode_, chip_cpu_seconds_per_chip),
     "detect_pass_seconds": [...], "full_pass_seconds": [...], "encode_pass_seconds": [...],
     "chip_batch_seconds": [...], "cpu_seconds": ..., "wall_seconds": ...,
     "dlib": "20.0.1", "face_recognition": "1.3.0", "dlib_blas": ...}

Usage:
    python3 faces.py --images DIR|PHOTO... --chips DIR [--models DIR] [--passes 3]
    python3 faces.py --rss IMAGE [--models DIR]

The models default to face_recognition_models' own copies (the same bytes as dlib.net's);
`--models DIR` points face_recognition at the .dat files of a folder instead.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

try:
    import dlib
    import face_recognition
    import face_recognition.api as fr_api
    import numpy as np
    from PIL import Image
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"faces.py needs face_recognition and dlib ({e}): pip install dlib face_recognition\n"
    )
    sys.exit(3)

ENCODER = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
DETECTOR = "mmod_human_face_detector.dat"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def use_models(models):
    """Points face_recognition's module-level models at the .dat files of `models`."""
    if not models:
        return
    fr_api.cnn_face_detector = dlib.cnn_face_detection_model_v1(os.path.join(models, DETECTOR))
    fr_api.pose_predictor_5_point = dlib.shape_predictor(os.path.join(models, LANDMARKS))
    fr_api.face_encoder = dlib.face_recognition_model_v1(os.path.join(models, ENCODER))


def list_images(folder):
    return sorted(
        os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS)
    )


def load_chip(path):
    """A 150x150 chip as an RGB uint8 array (PIL, converted to RGB, as the photos)."""
    return np.array(Image.open(path).convert("RGB"))


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def package_version(name):
    """The installed distribution's version (face_recognition 1.3.0 says 1.2.3 in __version__)."""
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing
        return None


def blas_note():
    """Whether this dlib was built with an external BLAS (dlib.DLIB_USE_BLAS, when exposed)."""
    return getattr(dlib, "DLIB_USE_BLAS", None)


def rss_mode(a):
    img = face_recognition.load_image_file(a.rss)
    locs = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="cnn")
    encs = face_recognition.face_encodings(img, known_face_locations=locs)
    print(
        json.dumps(
            {
                "image": a.rss,
                "shape": list(img.shape),
                "faces": len(encs),
                "peak_rss_mib": peak_rss_mib(),
                "dlib": dlib.__version__,
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", nargs="+", help="photos (.jpg, .png), or folders of them")
    ap.add_argument("--chips", help="folder of 150x150 chips (.png)")
    ap.add_argument("--models", help="folder of the three dlib .dat files")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    ap.add_argument("--chip-batches", type=int, default=3, help="timed batch calls")
    ap.add_argument("--rss", metavar="IMAGE", help="peak RSS of detecting and encoding IMAGE")
    a = ap.parse_args()
    use_models(a.models)
    if a.rss:
        rss_mode(a)
        return
    if not a.images or not a.chips:
        ap.error("--images and --chips are needed (or --rss IMAGE)")

    t_start, c_start = time.perf_counter(), cpu_seconds()
    paths = []
    for p in a.images:
        paths.extend(list_images(p) if os.path.isdir(p) else [p])
    images = [face_recognition.load_image_file(p) for p in paths]
    chip_paths = sorted(
        os.path.join(a.chips, n) for n in os.listdir(a.chips) if n.lower().endswith(".png")
    )
    chips = [load_chip(p) for p in chip_paths]
    if not images or not chips:
        sys.exit(f"faces.py: no images in {a.images} or no chips in {a.chips}")
    encoder = fr_api.face_encoder

    # Warm-up, untimed: the smallest image through every stage, one chip batch.
    small = min(images, key=lambda im: im.shape[0] * im.shape[1])
    warm = face_recognition.face_locations(small, number_of_times_to_upsample=1, model="cnn")
    face_recognition.face_encodings(small, known_face_locations=warm)
    encoder.compute_face_descriptor(chips)

    # Wall and CPU seconds (every thread of the process: time.process_time) of each pass.
    detect, full, encode = [], [], []
    detect_cpu, full_cpu, encode_cpu = [], [], []
    faces = 0
    for _ in range(a.passes):
        t_det = t_enc = c_det = c_enc = 0.0
        faces = 0
        for img in images:
            t0, c0 = time.perf_counter(), time.process_time()
            locs = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="cnn")
            t1, c1 = time.perf_counter(), time.process_time()
            encs = face_recognition.face_encodings(img, known_face_locations=locs)
            t2, c2 = time.perf_counter(), time.process_time()
            t_det += t1 - t0
            t_enc += t2 - t1
            c_det += c1 - c0
            c_enc += c2 - c1
            faces += len(encs)
        detect.append(t_det)
        encode.append(t_enc)
        full.append(t_det + t_enc)
        detect_cpu.append(c_det)
        encode_cpu.append(c_enc)
        full_cpu.append(c_det + c_enc)

    batches, batches_cpu = [], []
    for _ in range(a.chip_batches):
        t0, c0 = time.perf_counter(), time.process_time()
        out = encoder.compute_face_descriptor(chips)
        batches.append(time.perf_counter() - t0)
        batches_cpu.append(time.process_time() - c0)
        assert len(out) == len(chips)

    n = len(images)
    print(
        json.dumps(
            {
                "images": n,
                "faces": faces,
                "chips": len(chips),
                "passes": a.passes,
                "detect_seconds_per_image": statistics.median(detect) / n,
                "full_seconds_per_image": statistics.median(full) / n,
                "encode_seconds_per_image": statistics.median(encode) / n,
                "chip_seconds_per_chip": statistics.median(batches) / len(chips),
                "detect_cpu_seconds_per_image": statistics.median(detect_cpu) / n,
                "full_cpu_seconds_per_image": statistics.median(full_cpu) / n,
                "encode_cpu_seconds_per_image": statistics.median(encode_cpu) / n,
                "chip_cpu_seconds_per_chip": statistics.median(batches_cpu) / len(chips),
                "detect_pass_seconds": detect,
                "full_pass_seconds": full,
                "encode_pass_seconds": encode,
                "chip_batch_seconds": batches,
                "cpu_seconds": cpu_seconds() - c_start,
                "wall_seconds": time.perf_counter() - t_start,
                "peak_rss_mib": peak_rss_mib(),
                "dlib": dlib.__version__,
                "face_recognition": package_version("face_recognition"),
                "dlib_blas": blas_note(),
            }
        )
    )


if __name__ == "__main__":
    main()
