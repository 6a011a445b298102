"""Resume: a stage interrupted after a checkpoint and resumed with --resume_from_checkpoint ends with the same
weights as an uninterrupted run with the same seed."""

import torch
from safetensors.torch import load_file
from training_helpers import train_argv, write_llava_dataset
from transformers import TrainerCallback

from tinyllava_hf.training.cli import parse_args
from tinyllava_hf.training.train import train


class StopAtStep(TrainerCallback):
    """Stands in for a kill right after the checkpoint of `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def run(argv, callbacks=None):
    model_args, data_args, args, recipe = parse_args(argv)
    return train(model_args, data_args, args, recipe=recipe, callbacks=callbacks)


def test_interrupted_and_resumed_run_equals_straight_run(components_dir, tmp_path):
    data = write_llava_dataset(tmp_path, num_samples=12)  # 3 steps per epoch: the interruption is mid-epoch

    def argv(output_dir, *extra):
        return train_argv(
            "finetune", output_dir, data, "--llm", str(components_dir / "llama"), "--vision_tower",
            str(components_dir / "siglip"), "--learning_rate", "1e-2", "--lr_scheduler_type", "cosine",
            "--warmup_steps", "1", "--save_strategy", "steps", "--save_steps", "2", *extra, max_steps=4,
        )  # fmt: skip

    straight = run(argv(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    run(argv(interrupted), callbacks=[StopAtStep(2)])
    assert (interrupted / "checkpoint-2").is_dir() and not (interrupted / "checkpoint-4").exists()
    initial = load_file(interrupted / "checkpoint-2" / "model.safetensors")
    counter = StepCounter()
    resumed = run(argv(interrupted, "--resume_from_checkpoint", "true"), callbacks=[counter])
    assert counter.steps == [3, 4]  # it continued from checkpoint-2 rather than starting over
    assert (resumed / "checkpoint-4").is_dir()

    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    connector = "model.connector.0.weight"
    assert not torch.equal(initial[connector], actual[connector])  # it did train on after the resume
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=key)
