"""ANN benchmark: pgvector HNSW (the project's own search path) against FAISS HNSW and exact search.

    .venv/bin/python scripts/bench_ann.py                       # N=100000, dim 512, 200 queries
    .venv/bin/python scripts/bench_ann.py --n 5000 --dim 64 --queries 50   # smoke run
    .venv/bin/python scripts/bench_ann.py --json /tmp/ann.json

One invocation = one data set, so the figures in its table are comparable.

Data.  N catalogue vectors plus Q query vectors (not stored in the table) from
one seeded distribution meant to look more like CLIP image embeddings than
uniform noise does: a Gaussian mixture of ``--clusters`` centres (random unit
directions, cluster sizes log-normally unequal, like product categories), all
shifted by one shared offset direction (CLIP embeddings sit in a narrow cone:
here two random items have cosine ~0.4), plus anisotropic noise whose spectrum
decays as 1/sqrt(rank) in a random basis (a lower intrinsic dimension than
white noise), then L2-normalised.  Ground truth is the exact top-k by cosine
(numpy matrix product).

Systems, all with M=16, ef_construction=64 and the same ef_search sweep:

* pgvector HNSW through the real code path: a fresh embedded Postgres
  (``Settings(data_dir=<tmp>, database_url=None)``), ``upgrade(engine)``,
  ``repository.get_or_create_space`` (which creates the space's partial HNSW
  index over ``vector::vector(dim)``), products and embeddings loaded with
  COPY (binary vectors), then ``repository.search(session, space, q, k,
  ef_search=ef)``, one transaction per query on a kept-open connection.  By
  default the index is dropped before the COPY and re-created afterwards from
  its own definition (``pg_get_indexdef``), which is how a bulk load should be
  done; ``--build during-load`` keeps it and times the COPY into the index.
  EXPLAIN checks that the index is really used.  A second row ("bare psycopg")
  runs the same SQL in one round trip (binary vector parameter, session-level
  ef_search, no SQLAlchemy), to separate the database's cost from the client path.
* pgvector exact: ``repository.search(..., exact=True)`` (sequential scan).
* FAISS ``IndexHNSWFlat(dim, 16, METRIC_INNER_PRODUCT)``: one query per call
  (like the database) and a batch call for throughput.
* numpy brute force (one matrix-vector product + argpartition per query).

Single-thread conditions: OMP/OpenBLAS/MKL threads = 1 in this process,
``faiss.omp_set_num_threads(1)``, and in Postgres
``max_parallel_workers_per_gather = 0`` and ``max_parallel_maintenance_workers
= 0`` (index build and scans on one backend).  pgvector also pays the
client/server round trips over a Unix socket; the "server ms" column (median
``Execution Time`` of EXPLAIN ANALYZE) shows the part spent inside Postgres.
The server gets ``shared_buffers`` large enough for the table and index and a
``maintenance_work_mem`` large enough for an in-memory graph build.  Latencies
are measured after one untimed warm-up pass.
"""

from __future__ import annotations

import os

# Same single-thread conditions for every in-process system; must precede the numpy/faiss imports.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

K = 10


# --- data --------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(n: int, n_queries: int, dim: int, clusters: int, seed: int, *, offset: float = 1.0,
              noise: float = 0.8, decay: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(catalogue vectors, their cluster labels, query vectors), all L2-normalised float32."""
    rng = np.random.default_rng(seed)
    shared = _unit(rng.standard_normal(dim))
    centres = _unit(rng.standard_normal((clusters, dim)))
    weights = rng.lognormal(0.0, 1.0, clusters)
    weights /= weights.sum()
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = np.arange(1, dim + 1) ** -decay
    spectrum *= noise / np.sqrt((spectrum ** 2).sum())  # expected noise norm = ``noise`` (centres have norm 1)
    mixing = (basis * spectrum).T.astype(np.float32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((count, dim), np.float32)
        labels = rng.choice(clusters, size=count, p=weights)
        for start in range(0, count, 20000):
            lab = labels[start:start + 20000]
            z = rng.standard_normal((len(lab), dim), dtype=np.float32) @ mixing
            out[start:start + len(lab)] = _unit((offset * shared + centres[lab]).astype(np.float32) + z)
        return out, labels

    vectors, labels = draw(n)
    queries, _ = draw(n_queries)
    return vectors, labels, queries


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall(results: list[list[int]] | np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(map(int, r[:k])) & set(t.tolist())) / k for r, t in zip(results, truth)]))


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "qps_1thread": float(1000.0 / ms.mean())}


# --- numpy and FAISS -----------------------------------------------------------------------------

def bench_numpy(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    def one(q: np.ndarray) -> np.ndarray:
        sims = vectors @ q
        top = np.argpartition(-sims, K)[:K]
        return top[np.argsort(-sims[top])]

    for q in queries[: min(10, len(queries))]:
        one(q)  # warm-up
    times, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(one(q))
        times.append(time.perf_counter() - t0)
    return {"system": "numpy exact (X @ q)", "ef_search": None, "recall": recall(results, truth),
            **latency_stats(times), "build_s": 0.0}


def bench_faiss(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int, ef_construction: int,
                efs: list[int]) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t0 = time.perf_counter()
    index.add(vectors)
    build = time.perf_counter() - t0
    rows = []
    for ef in efs:
        index.hnsw.efSearch = ef
        for q in queries:  # warm-up
            index.search(q[None, :], K)
        times, results = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = index.search(q[None, :], K)
            times.append(time.perf_counter() - t0)
            results.append(ids[0])
        t0 = time.perf_counter()
        _, batch_ids = index.search(queries, K)
        batch = time.perf_counter() - t0
        rows.append({"system": "FAISS HNSWFlat", "ef_search": ef, "recall": recall(results, truth),
                     **latency_stats(times), "build_s": build,
                     "batch_qps_1thread": len(queries) / batch, "batch_recall": recall(batch_ids, truth)})
    return rows


# --- pgvector ------------------------------------------------------------------------------------

def _configure_and_restart(engine, settings, args) -> dict[str, str]:
    """Single-thread, in-memory settings for the bench server (a throw-away data directory)."""
    import pgserver
    from pgserver._commands import pg_ctl
    from sqlalchemy import text

    wanted = {
        "max_parallel_workers_per_gather": "0",
        "max_parallel_maintenance_workers": "0",
        "maintenance_work_mem": args.maintenance_work_mem,
        "shared_buffers": args.shared_buffers,
    }
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name, value in wanted.items():
            conn.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
    engine.dispose()
    pgdata = settings.pgdata_dir.resolve()
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # the handle engine.py started
    pg_ctl(["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"], pgdata=pgdata, user=server.system_user)
    with engine.connect() as conn:
        names = list(wanted) + ["jit", "work_mem", "server_version"]
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in names}
        shown["jit_available"] = str(conn.execute(text("SELECT pg_jit_available()")).scalar_one()).lower()
        return shown


def _stop_server(settings) -> str:
    from matcher.db.engine import stop_embedded

    return "stopped" if stop_embedded(settings) else "was not running"


def _explain(conn, statement: str, parameters, analyze: bool = False) -> tuple[str, float | None]:
    if analyze:
        doc = conn.exec_driver_sql("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, parameters).scalar_one()
        doc = doc[0] if isinstance(doc, list) else json.loads(doc)[0]
        return "", float(doc["Execution Time"])
    plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    return re.sub(r"'\[[^']*\]'", "'[...]'", plan), None


def bench_pgvector(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> tuple[list[dict], dict]:
    import psycopg
    from pgvector.psycopg import register_vector
    from sqlalchemy import event, text
    from sqlalchemy.orm import Session

    from matcher.db import repository as repo
    from matcher.db.engine import get_engine
    from matcher.db.migrate import upgrade
    from matcher.settings import Settings

    n, dim = vectors.shape
    info: dict = {"notes": []}
    rows: list[dict] = []
    data_dir = Path(tempfile.mkdtemp(prefix="mab", dir="/tmp"))
    settings = Settings(data_dir=data_dir, database_url=None)
    try:
        engine = get_engine(settings)
        info["pgvector_version"] = upgrade(engine)
        info["server_settings"] = _configure_and_restart(engine, settings, args)

        with Session(engine, expire_on_commit=False) as session:
            space = repo.get_or_create_space(session, "bench-clip", "bench-seg", dim,
                                             hnsw_m=args.m, hnsw_ef_construction=args.ef_construction)
            session.commit()
            indexdef = session.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                                       {"n": space.index_name}).scalar_one()
        info["index_definition"] = indexdef

        notices: list[str] = []
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as pg:
            register_vector(pg)
            pg.add_notice_handler(lambda d: notices.append(d.message_primary))
            if args.build == "after-load":
                pg.execute(f"DROP INDEX {space.index_name}")
            t0 = time.perf_counter()
            with pg.transaction(), pg.cursor() as cur:
                with cur.copy("COPY products (sku, title, category, image_uri, image_sha256) FROM STDIN") as copy:
                    for i in range(n):
                        copy.write_row((f"p{i:07d}", f"bench item {i}", f"cat{labels[i] % 25:02d}",
                                        f"mem://p{i:07d}", f"{i:064x}"))
            t_products = time.perf_counter() - t0
            ids = dict(pg.execute("SELECT sku, id FROM products").fetchall())
            t0 = time.perf_counter()
            with pg.transaction(), pg.cursor() as cur:
                with cur.copy("COPY embeddings (product_id, space_id, model_id, dim, image_sha256, vector) "
                              "FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int4", "text", "int4", "varchar", "vector"])
                    for i in range(n):
                        copy.write_row((ids[f"p{i:07d}"], space.id, "bench-clip", dim, f"{i:064x}", vectors[i]))
            t_embeddings = time.perf_counter() - t0
            build = t_embeddings
            if args.build == "after-load":
                t0 = time.perf_counter()
                pg.execute(indexdef)
                build = time.perf_counter() - t0
            pg.execute("VACUUM ANALYZE products")
            pg.execute("VACUUM ANALYZE embeddings")
            sizes = pg.execute(
                "SELECT pg_size_pretty(pg_relation_size(%s::regclass)), pg_size_pretty(pg_total_relation_size('embeddings'))",
                (space.index_name,)).fetchone()
        info.update(copy_products_s=t_products, copy_embeddings_s=t_embeddings, index_build_s=build,
                    build_mode=args.build, index_size=sizes[0], embeddings_total_size=sizes[1],
                    build_notices=[m for m in notices if "hnsw" in m.lower() or "maintenance_work_mem" in m])
        vector_rate = n / t_embeddings
        print(f"pgvector: COPY products {t_products:.1f} s, COPY embeddings {t_embeddings:.1f} s "
              f"({vector_rate:,.0f} vectors/s), index build ({args.build}) {build:.1f} s, "
              f"index {sizes[0]}, embeddings table {sizes[1]}", flush=True)

        with engine.connect() as conn:
            session = Session(bind=conn, expire_on_commit=False)

            captured: list[tuple[str, object]] = []

            def capture(c, cursor, statement, parameters, context, executemany):  # noqa: ANN001
                if statement.lstrip().upper().startswith("SELECT P.ID"):
                    captured.append((statement, parameters))

            def run(ef: int | None, exact: bool, count: int, timed: bool) -> tuple[list[float], list[list[int]]]:
                times, results = [], []
                for q in queries[:count]:
                    t0 = time.perf_counter()
                    hits = repo.search(session, space, q, K, ef_search=ef or 100, exact=exact)
                    session.rollback()  # one transaction per query, as a request would do
                    times.append(time.perf_counter() - t0)
                    results.append([int(h.sku[1:]) for h in hits])
                return (times if timed else []), results

            def plan_and_server_time(ef: int | None, exact: bool) -> tuple[str, float]:
                captured.clear()
                event.listen(conn, "before_cursor_execute", capture)
                try:
                    repo.search(session, space, queries[0], K, ef_search=ef or 100, exact=exact)
                    statement, parameters = captured[-1]
                    plan, _ = _explain(session.connection(), statement, parameters)
                    session.rollback()
                    server = []
                    for q in queries[: min(20, len(queries))]:
                        captured.clear()
                        repo.search(session, space, q, K, ef_search=ef or 100, exact=exact)
                        statement, parameters = captured[-1]
                        server.append(_explain(session.connection(), statement, parameters, analyze=True)[1])
                        session.rollback()
                finally:
                    event.remove(conn, "before_cursor_execute", capture)
                return plan, float(np.median(server))

            for ef in args.ef:
                plan, server_ms = plan_and_server_time(ef, False)
                uses_index = space.index_name in plan
                run(ef, False, len(queries), timed=False)  # warm-up
                times, results = run(ef, False, len(queries), timed=True)
                rows.append({"system": "pgvector HNSW (repo.search)", "ef_search": ef, "recall": recall(results, truth),
                             **latency_stats(times), "build_s": build, "server_ms": server_ms,
                             "uses_hnsw_index": uses_index})
                info.setdefault("plans", {})[f"hnsw ef={ef}"] = plan
                if not uses_index:
                    print(f"WARNING: the HNSW index is NOT in the plan at ef_search={ef}:\n{plan}", flush=True)

            plan, server_ms = plan_and_server_time(None, True)
            n_exact = min(args.exact_queries or len(queries), len(queries))
            run(None, True, min(5, n_exact), timed=False)  # warm-up
            times, results = run(None, True, n_exact, timed=True)
            rows.append({"system": "pgvector exact (seq scan)", "ef_search": None,
                         "recall": recall(results, truth[:n_exact]), **latency_stats(times), "build_s": 0.0,
                         "server_ms": server_ms, "uses_hnsw_index": space.index_name in plan, "queries": n_exact})
            info.setdefault("plans", {})["exact"] = plan
            session.close()

        # The same SQL without the client path: one round trip, binary vector, session-level ef_search.
        with psycopg.connect(conninfo, autocommit=True) as pg:
            register_vector(pg)
            sql = (f"SELECT p.id, p.sku, p.title, p.category, e.vector::vector({dim}) <=> %(q)s::vector({dim}) AS distance "
                   "FROM embeddings e JOIN products p ON p.id = e.product_id "
                   f"WHERE e.space_id = {int(space.id)} AND p.deleted_at IS NULL "
                   f"ORDER BY e.vector::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(k)s")
            for ef in args.ef:
                pg.execute(f"SET hnsw.ef_search = {int(ef)}")
                with pg.cursor() as cur:
                    for q in queries:  # warm-up; unnamed statements, so every execution gets a custom plan
                        cur.execute(sql, {"q": q, "k": K}, prepare=False).fetchall()
                    times, results = [], []
                    for q in queries:
                        t0 = time.perf_counter()
                        fetched = cur.execute(sql, {"q": q, "k": K}, prepare=False).fetchall()
                        times.append(time.perf_counter() - t0)
                        results.append([int(r[1][1:]) for r in fetched])
                rows.append({"system": "pgvector HNSW (bare psycopg)", "ef_search": ef, "recall": recall(results, truth),
                             **latency_stats(times), "build_s": build})
        engine.dispose()
    finally:
        try:
            info["server_stop"] = _stop_server(settings)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        info["data_dir_deleted"] = not data_dir.exists()
    return rows, info


# --- report --------------------------------------------------------------------------------------

def print_table(rows: list[dict]) -> None:
    header = f"{'system':<30} {'ef':>4} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8} {'QPS/1thr':>9} {'server ms':>9} {'build s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ef = "-" if r["ef_search"] is None else str(r["ef_search"])
        server = f"{r['server_ms']:.2f}" if r.get("server_ms") is not None else "-"
        build = f"{r['build_s']:.1f}" if r.get("build_s") else "-"
        print(f"{r['system']:<30} {ef:>4} {r['recall']:>9.4f} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} "
              f"{r['qps_1thread']:>9.1f} {server:>9} {build:>8}")


def ratios(rows: list[dict], efs: list[int]) -> list[dict]:
    def get(system: str, ef: int | None) -> dict | None:
        return next((r for r in rows if r["system"] == system and r["ef_search"] == ef), None)

    out = []
    pg_exact = get("pgvector exact (seq scan)", None)
    np_exact = get("numpy exact (X @ q)", None)
    for ef in efs:
        pg, bare, fa = get("pgvector HNSW (repo.search)", ef), get("pgvector HNSW (bare psycopg)", ef), get("FAISS HNSWFlat", ef)
        row = {"ef_search": ef}
        if pg and fa:
            row["pgvector_repo_p50_over_faiss_p50"] = pg["p50_ms"] / fa["p50_ms"]
        if bare and fa:
            row["pgvector_bare_p50_over_faiss_p50"] = bare["p50_ms"] / fa["p50_ms"]
        if pg and pg.get("server_ms") and fa:
            row["pgvector_server_ms_over_faiss_p50"] = pg["server_ms"] / fa["p50_ms"]
        if pg and pg_exact:
            row["pgvector_exact_p50_over_hnsw_p50"] = pg_exact["p50_ms"] / pg["p50_ms"]
        if fa and np_exact:
            row["numpy_exact_p50_over_faiss_hnsw_p50"] = np_exact["p50_ms"] / fa["p50_ms"]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="catalogue vectors")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200], help="ef_search sweep")
    parser.add_argument("--build", choices=["after-load", "during-load"], default="after-load",
                        help="drop the space's index for the COPY and re-create it (default), or COPY into it")
    parser.add_argument("--exact-queries", type=int, help="queries for the pgvector sequential scan (default: all)")
    parser.add_argument("--shared-buffers", default="1GB")
    parser.add_argument("--maintenance-work-mem", default="1GB")
    parser.add_argument("--skip", nargs="*", default=[], choices=["numpy", "faiss", "pgvector"])
    parser.add_argument("--json", type=Path, help="write config, figures and ratios here")
    args = parser.parse_args()

    import faiss

    print(f"ANN benchmark: N={args.n} dim={args.dim} queries={args.queries} k={K} clusters={args.clusters} "
          f"seed={args.seed}; HNSW M={args.m} ef_construction={args.ef_construction} ef_search={args.ef}")
    print(f"single-thread: OMP/OPENBLAS/MKL_NUM_THREADS=1, faiss.omp_set_num_threads(1), Postgres "
          f"max_parallel_workers_per_gather=0 and max_parallel_maintenance_workers=0; "
          f"{os.cpu_count()} CPUs visible (shared), {platform.processor() or platform.machine()}; faiss {faiss.__version__}, "
          f"numpy {np.__version__}", flush=True)

    t0 = time.perf_counter()
    vectors, labels, queries = make_data(args.n, args.queries, args.dim, args.clusters, args.seed)
    truth = exact_topk(vectors, queries, K)
    sims = queries @ vectors.T
    top = np.take_along_axis(sims, truth, axis=1)
    pairs = np.random.default_rng(args.seed + 1).integers(0, args.n, (2000, 2))
    data_stats = {
        "generate_and_ground_truth_s": time.perf_counter() - t0,
        "random_pair_cosine_mean": float(np.mean(np.sum(vectors[pairs[:, 0]] * vectors[pairs[:, 1]], axis=1))),
        "query_top1_cosine_median": float(np.median(top[:, 0])),
        "query_top10_cosine_median": float(np.median(top[:, -1])),
    }
    del sims
    print("data: Gaussian mixture, shared offset, 1/sqrt(rank) noise spectrum, L2-normalised; "
          f"random-pair cosine {data_stats['random_pair_cosine_mean']:.3f}, query top-1 cosine median "
          f"{data_stats['query_top1_cosine_median']:.3f}, top-10 {data_stats['query_top10_cosine_median']:.3f} "
          f"({data_stats['generate_and_ground_truth_s']:.1f} s)", flush=True)

    rows: list[dict] = []
    info: dict = {}
    if "numpy" not in args.skip:
        rows.append(bench_numpy(vectors, queries, truth))
        print(f"numpy exact done: p50 {rows[-1]['p50_ms']:.2f} ms", flush=True)
    if "faiss" not in args.skip:
        faiss_rows = bench_faiss(vectors, queries, truth, args.m, args.ef_construction, args.ef)
        rows.extend(faiss_rows)
        print(f"FAISS done: build {faiss_rows[0]['build_s']:.1f} s", flush=True)
    if "pgvector" not in args.skip:
        pg_rows, info = bench_pgvector(vectors, labels, queries, truth, args)
        rows.extend(pg_rows)

    order = ["pgvector HNSW (repo.search)", "pgvector HNSW (bare psycopg)", "pgvector exact (seq scan)",
             "FAISS HNSWFlat", "numpy exact (X @ q)"]
    rows.sort(key=lambda r: (order.index(r["system"]), r["ef_search"] or 0))
    print()
    print_table(rows)
    faiss_batch = [r for r in rows if r["system"] == "FAISS HNSWFlat"]
    if faiss_batch:
        print("FAISS batch (all queries in one call, 1 thread): " + ", ".join(
            f"ef={r['ef_search']}: {r['batch_qps_1thread']:,.0f} QPS" for r in faiss_batch))
    if info:
        s = info["server_settings"]
        print(f"pgvector {info['pgvector_version']} on PostgreSQL {s['server_version']}: shared_buffers={s['shared_buffers']}, "
              f"maintenance_work_mem={s['maintenance_work_mem']}, jit={s['jit']} (available: {s['jit_available']}); index build mode {info['build_mode']}: "
              f"COPY products {info['copy_products_s']:.1f} s, COPY embeddings {info['copy_embeddings_s']:.1f} s, "
              f"CREATE INDEX {info['index_build_s']:.1f} s; index {info['index_size']}, embeddings table {info['embeddings_total_size']}")
        used = {k: (info['plans'][k].count('embeddings_hnsw_space') > 0) for k in info["plans"]}
        print("EXPLAIN: HNSW index in plan: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in used.items()))
        hnsw_plan = next((v for k, v in info["plans"].items() if k.startswith("hnsw")), "")
        print("  " + "\n  ".join(hnsw_plan.splitlines()))
        exact_rows = [r for r in rows if r["system"] == "pgvector exact (seq scan)"]
        if exact_rows and exact_rows[0]["queries"] != args.queries:
            print(f"pgvector exact timed on the first {exact_rows[0]['queries']} queries")
        for note in info["notes"] + info.get("build_notices", []):
            print("NOTE: " + note)
        print(f"server: {info['server_stop']}; data dir deleted: {info['data_dir_deleted']}")
    ratio_rows = ratios(rows, args.ef)
    print("\nratios (p50 latency):")
    for r in ratio_rows:
        parts = [f"ef={r['ef_search']}:"]
        if "pgvector_repo_p50_over_faiss_p50" in r:
            parts.append(f"pgvector repo.search / FAISS = {r['pgvector_repo_p50_over_faiss_p50']:.1f}x")
        if "pgvector_bare_p50_over_faiss_p50" in r:
            parts.append(f"pgvector bare / FAISS = {r['pgvector_bare_p50_over_faiss_p50']:.1f}x")
        if "pgvector_server_ms_over_faiss_p50" in r:
            parts.append(f"pgvector in-server / FAISS = {r['pgvector_server_ms_over_faiss_p50']:.1f}x")
        if "pgvector_exact_p50_over_hnsw_p50" in r:
            parts.append(f"pgvector exact / HNSW = {r['pgvector_exact_p50_over_hnsw_p50']:.1f}x")
        if "numpy_exact_p50_over_faiss_hnsw_p50" in r:
            parts.append(f"numpy exact / FAISS HNSW = {r['numpy_exact_p50_over_faiss_hnsw_p50']:.1f}x")
        print("  " + "  ".join(parts))

    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "k": K, "data": data_stats, "results": rows,
                                         "ratios": ratio_rows, "pgvector": info}, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
