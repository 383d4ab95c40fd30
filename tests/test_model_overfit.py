"""The tiny model overfits one fixed synthetic batch (the whole detector learns, end to end)."""

import torch

from bev_model import build_model, get_preset
from bev_model.synthetic import make_batch
from shards.conventions import transform_boxes


def _best_detection_errors(model, batch) -> torch.Tensor:
    """For every GT box: BEV centre distance (m) to the best-scoring detection of its class."""
    model.eval()
    det = model.predict(batch)[0]
    gt = transform_boxes(batch.gt_boxes[0], torch.linalg.inv(batch.bev_aug[0]))  # predict() undoes bev_aug
    errs = []
    for box, label in zip(gt, batch.gt_labels[0]):
        same = det["labels"] == label
        best = det["boxes"][same][det["scores"][same].argmax()]
        errs.append(torch.linalg.norm(best[:2] - box[:2]))
    return torch.stack(errs)


def test_tiny_model_overfits_a_fixed_batch():
    # AdamW 2e-3, lr x0.2 at steps 150 and 225; from step 150 on, every 25 steps: stop once the loss is
    # below 10 % of its start and every GT box is found within 0.5 m (at most 400 steps, about 2 minutes on 2 quiet cores)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).train()
    batch = make_batch(1, 1, (64, 176), num_boxes=4, bev_aug=True, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [150, 225], 0.2)
    start, errors, steps = None, None, 0
    while steps < 400:
        model.train()
        out = model.forward_train(batch)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        sched.step()
        steps += 1
        last = out["loss"].item()
        start = start if start is not None else last
        if steps >= 150 and steps % 25 == 0 and last < 0.1 * start:
            errors = _best_detection_errors(model, batch)
            if float(errors.max()) < 0.5:
                break
    assert last < 0.1 * start, f"loss {start:.2f} -> {last:.2f} after {steps} steps"
    assert errors is not None and float(errors.max()) < 0.5, errors
