"""`python -m cngpt_tf.batch score|generate|poem INPUT... OUTPUT --model MODEL [options] [Beam options]`
(also `cngpt-batch`): the command line of `cngpt_tf.batch`.

Everything that can be checked is checked before the pipeline starts -- our flags, Beam's flags, the
generation settings against the model (`GenerationConfig.validate`, the Python API's rules), the poem's
characters in the vocab, that every INPUT pattern matches -- and a failure is a usage error (exit 2,
its message on the last line). Bad lines never fail the run: they become records with an `error`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import cli
from ..generation_config import check_int
from .inputs import DEFAULT_MAX_LINE_BYTES, FORMATS, InputError, match_inputs
from .options import local_cores, pipeline_options, split_beam_args
from .outputs import MAX_SHARDS, default_num_shards, shard_path

log = logging.getLogger("cngpt_tf.batch")

DESCRIPTION = ("Score or generate over a whole corpus with Apache Beam (RunInference): one JSON Lines "
               "record per input line, in OUTPUT-00000-of-000NN.jsonl.")
EXAMPLE = """\
example:
  python -m converters.pt2tf --demo demo_out/
  python -m cngpt_tf.batch score corpus.txt.gz out/scores --model demo_out/
  python -m cngpt_tf.batch generate 'prompts/*.txt' out/gen --model demo_out/ --max_new_tokens 32 --do_sample --top_k 8
  python -m cngpt_tf.batch poem titles.tfrecord out/poems --model demo_out/ --form 五言绝句 --rhyme auto

Beam pipeline options go anywhere on the line; without --runner it runs on the DirectRunner, one
worker process per local core. See `python -m cngpt_tf.batch score --help` for Flink, Spark, Dataflow.
"""
RUNNERS = """\
records:
  score:    {"id": "FILE:LINE", "input": ..., "log_likelihood": ..., "tokens": ..., "perplexity": ...}
  generate: {"id": ..., "input": ..., "generated_text": ... (a list with --num_return_sequences), "seed": ...}
  poem:     {"id": ..., "input": ..., "poem": ..., "seed": ...}
  a bad line: {"id": ..., "input": ..., "error": "..."}

runners (Beam pipeline options; the workers need this package: pip install 'cngpt-tf[beam]'):
  (default) --runner DirectRunner --direct_running_mode multi_processing --direct_num_workers CORES
  --runner FlinkRunner --flink_master HOST:8081 --environment_type DOCKER --sdk_container_image IMAGE
  --runner SparkRunner --spark_master_url spark://HOST:7077 --environment_type DOCKER --sdk_container_image IMAGE
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --sdk_container_image IMAGE
INPUT, OUTPUT and --model may be any path Beam's filesystems read (gs://, s3://, hdfs://).
"""
COMMANDS = {
    "score": "the log-likelihood and perplexity of every line (a sliding window past n_positions)",
    "generate": "a continuation of every line (the line is the prompt)",
    "poem": "a classical poem for every line (the line is its title or context)",
}
LENGTH_FLAGS = ("max_new_tokens", "max_length", "min_new_tokens")


def make_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser("python -m cngpt_tf.batch", DESCRIPTION, EXAMPLE)
    parser.allow_abbrev = False  # an abbreviation must not swallow one of Beam's flags
    commands = parser.add_subparsers(dest="command", required=True, metavar="{score,generate,poem}")
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=f"{DESCRIPTION} {name}: {text}.", epilog=RUNNERS,
                                  formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        cli.add_common_flags(sub)
        sub.set_defaults(command_parser=sub)  # usage errors found after parsing name the command
        sub.add_argument("paths", nargs="+", metavar="INPUT... OUTPUT",
                         help="text files or globs (.gz read as such) or TFRecord files, then the output prefix")
        sub.add_argument("--model", required=True, help="a pt2tf OUT_DIR, or its tf2/ or tf1/ folder")
        sub.add_argument("--input_format", choices=FORMATS, default="auto",
                         help="default: TFRecord for *.tfrecord[s][.gz], text otherwise")
        sub.add_argument("--batch_size", type=int, default=16, help="lines per model call (default 16)")
        sub.add_argument("--num_shards", type=int, default=0,
                         help="output files (default 0: one per 64 MiB of input)")
        sub.add_argument("--max_line_bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                         help="a longer line is an error record (default 1 MiB)")
        sub.add_argument("--log_every", type=int, default=1000, help="log a line per N records a worker writes")
        sub.add_argument("--worker_threads", type=int,
                         help="TensorFlow threads per worker (default: cores / workers on the DirectRunner)")
        if name != "score":
            cli.add_generation_flags(sub)
            sub._option_string_actions["--seed"].help = (  # noqa: SLF001  (argparse has no public setter)
                "each line samples from a seed made of this and its id (default 0: reruns are identical)")
    return parser


def main(argv=None) -> int:
    ours, beam_args = split_beam_args(list(sys.argv[1:] if argv is None else argv))
    args, unknown = make_parser().parse_known_args(ours)
    parser = args.command_parser
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if len(args.paths) < 2:
        parser.error("give at least one INPUT and then the OUTPUT prefix")
    inputs, output = args.paths[:-1], args.paths[-1]
    for flag, low in (("batch_size", 1), ("max_line_bytes", 1), ("log_every", 0), ("num_shards", 0)):
        try:
            check_int(flag, getattr(args, flag), low, MAX_SHARDS if flag == "num_shards" else None)
        except ValueError as e:
            parser.error(str(e))
    if args.worker_threads is not None and args.worker_threads < 1:
        parser.error(f"worker_threads must be an integer >= 1, got {args.worker_threads}")
    given = _generation_flags(parser, args)
    options, workers = pipeline_options(beam_args, parser, args.verbose)
    try:
        files = match_inputs(inputs)
    except InputError as e:
        parser.error(str(e))
    cli.setup_logging(args.verbose)
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel(logging.ERROR)  # e.g. workers' start-up warnings, relayed

    def run():
        import apache_beam as beam

        from .modelinfo import read_model_info
        from .pipeline import Plan, build, counters

        info = read_model_info(args.model)
        task = _task(parser, args.command, info, given)
        threads = args.worker_threads or (max(1, local_cores() // workers) if workers else None)
        shards = args.num_shards or default_num_shards(sum(size for _, size in files))
        plan = Plan(task, tuple(path for path, _ in files), output, args.model, args.input_format,
                    args.max_line_bytes, args.batch_size, shards, args.log_every, threads, args.verbose)
        log.info("%s: %d file(s) -> %s ... %s", args.command, len(files), shard_path(output, 0, shards),
                 shard_path(output, shards - 1, shards))
        pipeline = beam.Pipeline(options=options)
        build(pipeline, plan)
        result = pipeline.run()
        result.wait_until_finish()
        totals = counters(result)
        print(f"done: {totals['lines']} lines, {totals['tokens']} tokens, {totals['errors']} errors -> "
              f"{output}-*-of-{shards:05d}.jsonl")

    return cli.run_main(run)


def _generation_flags(parser, args) -> dict:
    """The generation flags given, checked alone (no model needed yet); the poem flags only for poem."""
    if args.command == "score":
        return {}
    if args.command == "generate":
        for name in cli.POEM_FLAGS:
            if getattr(args, name) is not None:
                parser.error(f"--{name}: a poem setting; use the poem command")
        return cli.generation_flags(parser, args)
    for name in LENGTH_FLAGS:
        if getattr(args, name) is not None:
            parser.error(f"--{name}: a poem's form fixes its length")
    return cli.generation_flags(parser, args, do_sample=True)


def _task(parser, command: str, info, given: dict):
    """The command's task, its settings checked against the model (a usage error otherwise)."""
    from ..poetry import PoemPlan, PoemVocab
    from .tasks import Generate, Poem, Score

    if command == "score":
        return Score()
    changes = {"do_sample": True, **given} if command == "poem" else given  # a poem samples, as poem() does
    try:
        settings = info.defaults.update(**changes)
        if settings.seed is None:  # a run is reproducible by default: seed 0
            settings = settings.update(seed=0)
        settings = settings.validate(info.config.n_vocab, info.config.n_ctx)
        if command == "poem":
            vocab = PoemVocab(info.tokenizer().tokens, info.config.eos_token_id)
            PoemPlan.build(vocab, settings.form, 1, settings.acrostic, settings.rhyme)  # the characters exist
            return Poem(settings)
    except ValueError as e:
        parser.error(str(e))
    return Generate(settings)
