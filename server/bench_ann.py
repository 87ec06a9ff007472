"""Benchmark approximate top-100 retrieval by LightFM score against exact search, to choose a library.

``python -m server.bench_ann`` compares, at 100k, 1M and 10M items of 32 components plus a bias:

- ``exact``: :meth:`engine.embeddings.Embeddings.top_n` below its ANN threshold (one matrix-vector
  product and an ``argpartition``), BLAS on one thread; its answers are the ground truth;
- ``faiss-ivf``: faiss ``IndexIVFFlat``, inner product over ``[p_i, b_i]`` (query ``[q_u, 1]``);
- ``hnswlib`` and ``usearch``: HNSW graphs. With the inner product directly their recall@100 stayed
  below 0.7 on this data in trials, so they get the exact MIPS-to-L2 reduction (Bachrach et al.,
  2014): ``x_i = [p_i, b_i, sqrt(R^2 - |[p_i, b_i]|^2)]``, ``y_u = [q_u, 1, 0]``, where ``R`` is the
  largest item norm; then ``|x_i - y_u|^2 = R^2 + |y_u|^2 - 2 (q_u . p_i + b_i)`` and the nearest
  item in L2 is the best-scoring one;
- ``recbandit``: ``Embeddings.top_n`` above its threshold, end to end: the faiss index just measured
  (:class:`engine.ann.AnnIndex`, the winner) at its default ``nprobe``, the exact rescoring of the
  candidates and the item ids (measured in the same process, on the same index).

Per library and size: build time (both cores), the bytes the index holds and the process's RSS
growth over the build, p50/p99 wall-clock latency of one query (``time.perf_counter``) on one
thread, p99 of that thread's CPU time (``time.thread_time``: the part of the p99 that is the
machine's other load shows as the gap), recall@100 against exact over the truth queries, and the
ratio of the p99 to exact's p99 at the same size. Each library runs in its own process, so memory
figures are its own and one library's arena does not slow the next. Graph libraries are built only
up to ``--graph-max-items`` (100k by default): on this machine their 1M builds took 140 s (hnswlib)
and 230 s (usearch) on both cores, a 10M build far longer than the whole benchmark; the table says
so. A candidate that is not installed (only faiss-cpu is a dependency) is skipped with a note.
``recbandit`` rows also give the time of one catalog upsert against the index (``upsert ms``).

The data imitates a trained LightFM model (see :func:`catalog`). A LightFM item representation is
the mean of its feature embeddings (identity, category, brand...), so items sit in clusters around
their category, and the biases are a skewed popularity term unrelated to position. Fitted to a
model trained on ``training.embeddings.planted_world`` (50 categories, 20k items, 32 components):
item norms 1.2-1.8, the category explains about 94% of the variance, the residual around a
category has an effective dimension of about 20, biases from -0.23 (1%) to 0.5 (99%). The
generator gives norms 1.0-1.8, about 7% of the variance within a leaf category (isotropic there)
and the same bias quantiles. Isotropic gaussian data has no clusters at all, which favours neither
kind of index the way real embeddings do.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOP = 100
LEAVES_PER_TOP, TOP_CATEGORIES, BRANDS = 10, 100, 500


# -- the data ----------------------------------------------------------------------------------------


def catalog(n_items: int, components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LightFM-like item vectors (n, k), biases (n,) and the category centres (1000, k), all float32.

    Two levels of categories: 100 top categories ``c_t ~ N(0, 0.23^2 I)``, each with 10 leaves
    ``c_l = c_t + N(0, 0.09^2 I)``; leaf sizes follow Zipf (``1 / rank^0.7``). An item is
    ``p_i = c_leaf + brand + e_i`` with one of 500 brands ``~ N(0, 0.04^2 I)`` and an identity part
    ``e_i ~ N(0, 0.045^2 I)``. The bias is a shifted Gumbel, ``b_i = 0.1 (G - 0.37) - 0.03``: most items
    slightly negative, a long tail of popular ones, independent of the item's position.
    """
    rng = np.random.default_rng(seed)
    tops = rng.normal(0, 0.23, (TOP_CATEGORIES, components))
    leaves = (np.repeat(tops, LEAVES_PER_TOP, axis=0)
              + rng.normal(0, 0.09, (TOP_CATEGORIES * LEAVES_PER_TOP, components))).astype(np.float32)
    brands = rng.normal(0, 0.04, (BRANDS, components)).astype(np.float32)
    leaf = rng.choice(len(leaves), n_items, p=_zipf(len(leaves)))
    brand = rng.integers(0, BRANDS, n_items)
    vectors = np.empty((n_items, components), np.float32)
    for start in range(0, n_items, 1_000_000):
        part = slice(start, min(n_items, start + 1_000_000))
        noise = rng.normal(0, 0.045, (part.stop - part.start, components)).astype(np.float32)
        vectors[part] = leaves[leaf[part]] + brands[brand[part]] + noise
    biases = (0.1 * (rng.gumbel(0, 1, n_items) - 0.37) - 0.03).astype(np.float32)
    return vectors, biases, leaves


def user_vectors(n_users: int, leaves: np.ndarray, seed: int = 1) -> np.ndarray:
    """Users who like two categories (Zipf-popular ones more often): ``0.6 c_a + 0.3 c_b + N(0, 0.08^2 I)``."""
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(leaves), (2, n_users), p=_zipf(len(leaves)))
    noise = rng.normal(0, 0.08, (n_users, leaves.shape[1]))
    return (0.6 * leaves[a] + 0.3 * leaves[b] + noise).astype(np.float32)


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.7
    return weights / weights.sum()


# -- one library, one size, in its own process ----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    library: str
    items: int
    data: str  # .npz with vectors, biases, users
    truth: str  # .npy of exact top-100 rows for the first truth_queries users
    settings: tuple[int, ...]  # nprobe or ef values to sweep
    truth_queries: int
    end_to_end: bool = False  # faiss-ivf only: also time Embeddings.top_n over the same index


@dataclass(frozen=True)
class Row:
    library: str
    items: int
    setting: str
    build_s: float
    index_mb: float
    rss_mb: float
    p50_ms: float
    p99_ms: float
    cpu_p99_ms: float
    recall: float
    upsert_ms: float = float("nan")  # faiss: median time to replace one item (a remove scans every list)


def run_job(job: Job) -> list[Row]:
    """Build ``job.library``'s index over the data and measure every setting (in a child process)."""
    from threadpoolctl import threadpool_limits

    with np.load(job.data) as data:
        vectors, biases, users = data["vectors"], data["biases"], data["users"]
    rss_before = _rss_mb()
    started = time.perf_counter()
    searcher, index_bytes, tune = BUILDERS[job.library](vectors, biases)
    build_s = time.perf_counter() - started
    rss_mb = _rss_mb() - rss_before
    truth = np.load(job.truth) if job.library != "exact" else None
    if job.library == "exact":  # about 150 ms a query at 10M: time the truth queries only
        users = users[: job.truth_queries]
    rows = []
    with threadpool_limits(1):
        for setting in job.settings or (0,):
            tune(setting)
            wall, cpu, found = _measure(searcher, users)
            if truth is None:
                truth = np.array(found[: job.truth_queries])
                np.save(job.truth, truth)
            rows.append(_row(job.library, job.items, _setting_name(job.library, setting), build_s,
                             index_bytes, rss_mb, wall, cpu, found, truth))
        if job.library == "faiss-ivf" and job.end_to_end:
            tune(0)
            wall, cpu, found = _measure(_end_to_end(vectors, biases, searcher.index), users)
            rows.append(_row("recbandit", job.items, "defaults", build_s, index_bytes, rss_mb, wall, cpu, found, truth,
                             _upsert_ms(searcher.index, vectors, biases)))
    return rows


def _upsert_ms(index, vectors: np.ndarray, biases: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """Median of 5 replacements of one item by itself (what a catalog upsert of one item costs)."""
    times = []
    for row in range(5):
        t = time.perf_counter()
        index.upsert(np.array([row]), vectors[row : row + 1], biases[row : row + 1])
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _row(library: str, items: int, setting: str, build_s: float, index_bytes: int, rss_mb: float,
         wall: np.ndarray, cpu: np.ndarray, found: list[np.ndarray], truth: np.ndarray,
         upsert_ms: float = float("nan")) -> Row:
    recall = float(np.mean([len(np.intersect1d(f, t)) / TOP for f, t in zip(found, truth)]))
    return Row(library, items, setting, build_s, index_bytes / 2**20, rss_mb, float(np.percentile(wall, 50)),
               float(np.percentile(wall, 99)), float(np.percentile(cpu, 99)), recall, upsert_ms)


def _measure(search: Callable[[np.ndarray], np.ndarray], users: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    for user in users[:10]:  # warm-up
        search(user)
    wall, cpu, found = [], [], []
    for user in users:
        t, c = time.perf_counter(), time.thread_time()
        rows = search(user)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
        found.append(rows)
    return 1000 * np.array(wall), 1000 * np.array(cpu), found


def _setting_name(library: str, setting: int) -> str:
    return {"exact": "-", "faiss-ivf": f"nprobe={setting}"}.get(library, f"ef={setting}")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the candidates: each returns (search(user) -> rows, index bytes, tune(setting)) ------------------


def _exact(vectors: np.ndarray, biases: np.ndarray):  # type: ignore[no-untyped-def]
    embeddings = _embeddings(vectors, biases, ann_threshold=None)
    return _rows_of(embeddings), 0, lambda setting: None


def _end_to_end(vectors: np.ndarray, biases: np.ndarray, index):  # type: ignore[no-untyped-def]
    """``Embeddings.top_n`` over ``index``, which is what the embeddings would build (rows 0..n-1)."""
    embeddings = _embeddings(vectors, biases, ann_threshold=None)
    embeddings._ann, embeddings.ann_threshold = index, 0  # reuse the index: a 10M build takes minutes
    return _rows_of(embeddings)


def _embeddings(vectors: np.ndarray, biases: np.ndarray, ann_threshold: int | None):  # type: ignore[no-untyped-def]
    from engine.embeddings import Embeddings, FeatureTable

    k = vectors.shape[1]
    table = FeatureTable(["segment=a"], np.zeros((1, k), np.float32), np.zeros(1, np.float32))
    return Embeddings(table, table, [str(i) for i in range(len(biases))], biases, vectors, ann_threshold=ann_threshold)


def _rows_of(embeddings):  # type: ignore[no-untyped-def]
    from engine.embeddings import Representation

    return lambda user: np.array([int(i) for i, _ in embeddings.top_n(Representation(0.0, user), TOP)])


def _faiss_ivf(vectors: np.ndarray, biases: np.ndarray):  # type: ignore[no-untyped-def]
    from engine.ann import AnnIndex

    index = AnnIndex(np.arange(len(biases)), vectors, biases)
    default = index.nprobe

    def tune(nprobe: int) -> None:
        index._index.nprobe = nprobe or default  # 0: the default

    def search(user: np.ndarray) -> np.ndarray:
        return index.search(user, TOP)

    search.index = index  # type: ignore[attr-defined]
    return search, index.nbytes, tune


def _mips_to_l2(vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """``[p_i, b_i, sqrt(R^2 - |[p_i, b_i]|^2)]``: the nearest of these in L2 to ``[q, 1, 0]`` scores best."""
    x = np.empty((len(biases), vectors.shape[1] + 2), np.float32)
    x[:, :-2], x[:, -2] = vectors, biases
    norms = np.einsum("ij,ij->i", x[:, :-1], x[:, :-1])
    x[:, -1] = np.sqrt(np.maximum(norms.max() - norms, 0.0))
    return x


def _query(user: np.ndarray) -> np.ndarray:
    return np.concatenate([user, np.array([1.0, 0.0], np.float32)])


GRAPH_M, GRAPH_EF_CONSTRUCTION = 32, 200


def _hnswlib(vectors: np.ndarray, biases: np.ndarray):  # type: ignore[no-untyped-def]
    import hnswlib

    x = _mips_to_l2(vectors, biases)
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=GRAPH_M, ef_construction=GRAPH_EF_CONSTRUCTION, random_seed=0)
    index.add_items(x, np.arange(len(x)), num_threads=os.cpu_count() or 1)
    del x
    index.set_num_threads(1)
    return (lambda user: index.knn_query(_query(user)[None, :], k=TOP, num_threads=1)[0][0].astype(np.int64),
            index.index_file_size(), index.set_ef)


def _usearch(vectors: np.ndarray, biases: np.ndarray):  # type: ignore[no-untyped-def]
    from usearch.index import Index

    x = _mips_to_l2(vectors, biases)
    index = Index(ndim=x.shape[1], metric="l2sq", dtype="f32", connectivity=GRAPH_M,
                  expansion_add=GRAPH_EF_CONSTRUCTION)
    index.add(np.arange(len(x)), x, threads=os.cpu_count() or 1)
    del x

    def tune(ef: int) -> None:
        index.expansion_search = ef

    return lambda user: index.search(_query(user), TOP, threads=1).keys.astype(np.int64), index.memory_usage, tune


BUILDERS = {"exact": _exact, "faiss-ivf": _faiss_ivf, "hnswlib": _hnswlib, "usearch": _usearch}
#: The candidates measured, with the version compared; only faiss-cpu is a dependency of recbandit.
PACKAGES = {"faiss-ivf": ("faiss", "faiss-cpu==1.15.1"), "hnswlib": ("hnswlib", "hnswlib==0.8.0"),
            "usearch": ("usearch", "usearch==2.26.6")}
GRAPH_LIBRARIES = ("hnswlib", "usearch")


def sweep(library: str, items: int) -> tuple[int, ...]:
    """The settings tried: nprobe around :mod:`engine.ann`'s default, ef from 100 to 1600."""
    if library == "faiss-ivf":
        from engine.ann import default_nlist, default_nprobe

        nprobe = default_nprobe(default_nlist(items))
        return (nprobe // 2, nprobe, 2 * nprobe)  # the end-to-end row uses the default
    if library in GRAPH_LIBRARIES:
        return (100, 400, 1600)
    return ()


# -- the table ---------------------------------------------------------------------------------------


def bench(sizes: Sequence[int], libraries: Sequence[str], components: int, queries: int,
          truth_queries: int, graph_max_items: int, workdir: Path) -> list[Row | str]:
    """Every library at every size, each in a fresh process; a string for a combination not run."""
    context = multiprocessing.get_context("spawn")
    results: list[Row | str] = []
    for items in sizes:
        data, truth = workdir / f"data-{items}.npz", workdir / f"truth-{items}.npy"
        vectors, biases, leaves = catalog(items, components)
        np.savez(data, vectors=vectors, biases=biases, users=user_vectors(queries, leaves))
        del vectors, biases
        for library in ("exact", *libraries):
            skipped = _skip_reason(library, items, graph_max_items)
            if skipped:
                results.append(f"{library:<10} {items:>10,} {skipped}")
                print(results[-1], flush=True)
                continue
            job = Job(library, items, str(data), str(truth), sweep(library, items), truth_queries,
                      end_to_end=library == "faiss-ivf")
            with context.Pool(1) as pool:
                rows = pool.apply(run_job, (job,))
            results.extend(rows)
            for row in rows:
                print(_format(row, _exact_p99(results, items)), flush=True)
        data.unlink()
    return results


def _skip_reason(library: str, items: int, graph_max_items: int) -> str | None:
    if library in PACKAGES and importlib.util.find_spec(PACKAGES[library][0]) is None:
        return f"not installed: pip install {PACKAGES[library][1]} to compare it"
    if library in GRAPH_LIBRARIES and items > graph_max_items:
        return (f"not run: HNSW builds take 140-230 s at 1M items here and grow faster than linearly; "
                f"--graph-max-items {items} to run ({graph_max_items:,} now)")
    return None


def _exact_p99(results: Sequence[Row | str], items: int) -> float:
    return next(r.p99_ms for r in results if isinstance(r, Row) and r.library == "exact" and r.items == items)


HEADER = (f"{'library':<10} {'items':>10} {'setting':<11} {'build s':>8} {'index MB':>9} {'RSS +MB':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'cpu p99':>7} {'recall':>7} {'p99/exact':>9} {'upsert ms':>9}")


def _format(row: Row, exact_p99: float) -> str:
    return (f"{row.library:<10} {row.items:>10,} {row.setting:<11} {row.build_s:>8.1f} {row.index_mb:>9.0f} "
            f"{row.rss_mb:>8.0f} {row.p50_ms:>7.3f} {row.p99_ms:>7.3f} {row.cpu_p99_ms:>7.3f} "
            f"{row.recall:>7.4f} {row.p99_ms / exact_p99:>9.4f} "
            + (f"{row.upsert_ms:>9.2f}" if np.isfinite(row.upsert_ms) else f"{'-':>9}"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--libraries", nargs="+", default=["faiss-ivf", "hnswlib", "usearch"],
                        choices=[b for b in BUILDERS if b != "exact"])
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1000, help="timed queries per setting")
    parser.add_argument("--truth-queries", type=int, default=200, help="queries whose recall is measured")
    parser.add_argument("--graph-max-items", type=int, default=100_000,
                        help="largest catalog the HNSW libraries are built over (1M takes 6 more minutes)")
    args = parser.parse_args(argv)
    print(f"top-{TOP}, {args.components} components + bias, one query at a time on one thread; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as workdir:
        results = bench(args.sizes, args.libraries, args.components, args.queries, args.truth_queries,
                        args.graph_max_items, Path(workdir))
    print("\n" + HEADER)
    for r in results:
        print(_format(r, _exact_p99(results, r.items)) if isinstance(r, Row) else r)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
