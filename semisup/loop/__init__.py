"""The pieces of the training loop (``semisup/train.py`` reads them top to bottom; docs/architecture.md):
setup (prepare -> Setup), rundir (RunDir), batches (BatchSource), optimize, interval (IntervalStats),
evaluator (Evaluator), checkpoints (components, LoopState), stopper (Stopper, Stopped), monitor."""
