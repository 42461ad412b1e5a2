"""Corpus-scale scoring and generation on Apache Beam: `python -m cngpt_tf.batch` (`cngpt-batch`).

    python -m converters.pt2tf --demo demo_out/
    python -m cngpt_tf.batch score 'corpus/*.txt.gz' out/scores --model demo_out/
    python -m cngpt_tf.batch generate prompts.txt out/gen --model demo_out/ --max_new_tokens 32 --do_sample --top_k 8
    python -m cngpt_tf.batch poem titles.tfrecord out/poems --model demo_out/ --form 五言绝句 --rhyme auto

One JSON Lines record per input line, in `OUTPUT-00000-of-000NN.jsonl`: `id` (`FILE:LINE`), `input`, and
`log_likelihood`, `tokens`, `perplexity` (score), `generated_text` (generate) or `poem` (poem), with the
line's `seed` when sampling -- or `error` for a line that could not be used (not UTF-8, longer than
--max_line_bytes, empty when scoring, too long for the context). The generation flags are those of
`python -m cngpt_tf.generate` (one `GenerationConfig`, the same checks); --seed defaults to 0.

The pipeline is Beam's RunInference with our `ModelHandler` (`handler`): each worker process loads
the model once and shares it across its threads; lines are tokenized, grouped by length bucket and
cut into batches that depend only on the data (`batching`), so a rerun or a retried bundle writes
byte-identical files (`outputs`), and each line samples from its own seed (`seeded`).

Runners. Without --runner: the DirectRunner, one worker process per local core. The same pipeline
runs unchanged elsewhere; INPUT, OUTPUT and --model may then be any path Beam's filesystems read, and
the workers need this package (build an SDK image: `FROM apache/beam_python3.11_sdk:2.77.0`,
`COPY . /src`, `RUN pip install '/src[beam]'`). Written for the reader, not run here (no cluster):

    # Flink (a running cluster, Beam's Flink job server started for you)
    python -m cngpt_tf.batch score 'gs://B/corpus/*.txt.gz' gs://B/out/scores --model gs://B/demo_out \\
        --runner FlinkRunner --flink_master HOST:8081 --parallelism 8 \\
        --environment_type DOCKER --sdk_container_image IMAGE
    # Spark
    python -m cngpt_tf.batch score 'gs://B/corpus/*.txt.gz' gs://B/out/scores --model gs://B/demo_out \\
        --runner SparkRunner --spark_master_url spark://HOST:7077 \\
        --environment_type DOCKER --sdk_container_image IMAGE
    # Dataflow
    python -m cngpt_tf.batch score 'gs://B/corpus/*.txt.gz' gs://B/out/scores --model gs://B/demo_out \\
        --runner DataflowRunner --project P --region us-central1 --temp_location gs://B/tmp \\
        --sdk_container_image IMAGE --machine_type n2-standard-8

Modules: `command` (the CLI), `options` (Beam's flags, the default runner), `inputs` and `tfrecord`
(reading), `records` (ids, seeds, shards), `tasks` (the three commands), `batching`, `handler`
(RunInference), `scoring` (sliding-window perplexity), `seeded` (per-row seeds), `staging` (the model
from any filesystem), `modelinfo` (what is checked before the run), `pipeline`, `outputs`.
"""

from .options import import_beam

import_beam()  # before any module of the package imports Beam: its import-time warning held back
