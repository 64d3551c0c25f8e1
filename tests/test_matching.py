"""Anchor labelling: the chapter's multibox_target, batched, with its two bugs fixed."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyssd.matching as matching
from tinyssd.anchors import AnchorGenerator
from tinyssd.boxes import box_iou, encode_offsets
from tinyssd.matching import anchor_targets, chapter_rows, match_anchors, multibox_target
from tinyssd.models.config import tiny_ssd

d2l = pytest.importorskip("d2l.torch")


def _tiny_anchors() -> torch.Tensor:
    config = tiny_ssd()
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    return AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")


TINY_ANCHORS = _tiny_anchors()  # (5444, 4)


def _random_boxes(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Boxes of varied sizes (sides e^-4 = 0.018 to 1), clipped to the image."""
    centre = torch.rand(*shape, 2, generator=g)
    half = torch.empty(*shape, 2).uniform_(-4, 0, generator=g).exp() / 2
    return torch.cat(((centre - half).clamp(0, 1), (centre + half).clamp(0, 1)), dim=-1)


def _random_labels(g: torch.Generator, batch: int, num_gt: int, num_classes: int = 3):
    """``Tensor[B, M, 5]`` rows (class, x1, y1, x2, y2), no padding."""
    cls = torch.randint(0, num_classes, (batch, num_gt, 1), generator=g).float()
    return torch.cat((cls, _random_boxes(g, batch, num_gt)), dim=-1)


def _assert_same_targets(ours, chapter):
    names = ("bbox_offset", "bbox_mask", "class_labels")
    for name, a, b in zip(names, ours, chapter, strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


@pytest.mark.parametrize("seed", range(12))
def test_equals_chapter_on_tiny_ssd_anchors(seed):
    g = torch.Generator().manual_seed(seed)
    batch, num_gt = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    labels = _random_labels(g, batch, num_gt)
    _assert_same_targets(
        multibox_target(TINY_ANCHORS[None], labels),
        d2l.multibox_target(TINY_ANCHORS[None], labels),
    )


@pytest.mark.parametrize("seed", range(40))
def test_equals_chapter_on_small_random_anchor_sets(seed):
    # few anchors: boxes compete for the same anchors and some IoUs are all zero
    g = torch.Generator().manual_seed(1000 + seed)
    num_anchors = int(torch.randint(8, 40, (1,), generator=g))
    anchors = _random_boxes(g, 1, num_anchors)
    batch, num_gt = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    labels = _random_labels(g, batch, num_gt)
    _assert_same_targets(multibox_target(anchors, labels), d2l.multibox_target(anchors, labels))


def _grid_anchors_4x4():
    """``Tensor[16, 4]``: equal square anchors of side 0.25 tiling the image, row-major."""
    ticks = torch.arange(4) / 4
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack((x, y, x + 0.25, y + 0.25), dim=-1).reshape(-1, 4)


@pytest.mark.parametrize("copies", [1, 3, 6])
def test_equals_chapter_with_duplicate_boxes_and_exact_ties(copies):
    # a 4 x 4 grid of equal square anchors: a box centred on a grid corner has the
    # same IoU with four anchors, its copies tie with it, and a tiny box overlaps
    # one anchor only (zero IoU with all the others): every tie rule is exercised
    anchors = _grid_anchors_4x4()
    corner = torch.tensor([0.375, 0.375, 0.625, 0.625])
    tiny = torch.tensor([0.05, 0.05, 0.06, 0.06])
    boxes = torch.stack([corner] * copies + [tiny, tiny, corner + 0.125])
    labels = torch.cat((torch.zeros(len(boxes), 1), boxes), dim=1)[None]
    _assert_same_targets(multibox_target(anchors, labels), d2l.multibox_target(anchors, labels))


def test_docstring_worked_example(monkeypatch):
    # match_anchors' docstring example: 3 anchors x 2 boxes, threshold 0.5.
    #   step 1: anchors 0 (0.9) and 1 (0.6) reach 0.5 on box 0.
    #   step 2 (greedy, the chapter's loop): the largest IoU, 0.9, gives anchor 0 to box 0;
    #   with anchor 0 and box 0 removed the largest is anchor 1's 0.4 with box 1, which
    #   overrides step 1; anchor 2 (0.3 < 0.5) stays background.
    iou = torch.tensor([[0.9, 0.0], [0.6, 0.4], [0.1, 0.3]])  # (A, M)
    for table, expected in ((iou, [0, 1, -1]), (iou[[1, 0, 2]], [1, 0, -1])):  # and swapped
        blocks = lambda anchors, boxes, t=table: iter([(slice(0, 2), t.T.clone())])  # noqa: E731
        monkeypatch.setattr(matching, "anchor_iou_blocks", blocks)
        valid = torch.ones(1, 2, dtype=torch.bool)
        assert match_anchors(torch.zeros(3, 4), torch.zeros(1, 2, 4), valid).tolist() == [expected]
    # the chapter's assign_anchor_to_bbox on the same IoU matrix agrees
    monkeypatch.setattr(d2l, "box_iou", lambda a, b: iou.clone())
    chapter = d2l.assign_anchor_to_bbox(torch.zeros(2, 4), torch.zeros(3, 4), "cpu")
    assert chapter.tolist() == [0, 1, -1]


def test_chapter_anchor_labelling_example():
    # the anchor chapter's example: a dog (class 0) and a cat (class 1), five anchors
    ground_truth = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])
    anchors = torch.tensor(
        [
            [0, 0.1, 0.2, 0.3],
            [0.15, 0.2, 0.4, 0.4],
            [0.63, 0.05, 0.88, 0.98],
            [0.66, 0.45, 0.8, 0.8],
            [0.57, 0.3, 0.92, 0.9],
        ]
    )
    offset, mask, cls = multibox_target(anchors[None], ground_truth[None])
    assert cls.tolist() == [[0, 1, 2, 0, 2]]
    assert mask.tolist() == [[0.0] * 4 + [1.0] * 8 + [0.0] * 4 + [1.0] * 4]
    expected = torch.tensor(
        [
            [0, 0, 0, 0],
            [1.4, 10.0, 2.59, 7.18],
            [-1.2, 0.269, 1.68, -1.57],
            [0, 0, 0, 0],
            [-0.571, -1.0, 0.00000417, 0.626],
        ]
    ).reshape(1, -1)
    torch.testing.assert_close(offset, expected, rtol=0, atol=1e-2)


def _pad(labels_per_image: list[torch.Tensor]) -> torch.Tensor:
    """Stack images with different box counts, padding with all -1 rows (the chapter's),
    at least one row (as ``tinyssd.data``'s collate)."""
    num_gt = max(1, *(len(lab) for lab in labels_per_image))
    out = torch.full((len(labels_per_image), num_gt, 5), -1.0)
    for i, lab in enumerate(labels_per_image):
        out[i, : len(lab)] = lab
    return out


def test_padding_rows_never_take_an_anchor():
    g = torch.Generator().manual_seed(0)
    per_image = [_random_labels(g, 1, m)[0] for m in (1, 4, 2, 3)]
    padded = _pad(per_image)
    offset, mask, cls = multibox_target(TINY_ANCHORS, padded)
    for i, lab in enumerate(per_image):
        alone = multibox_target(TINY_ANCHORS, lab[None])
        _assert_same_targets((offset[i : i + 1], mask[i : i + 1], cls[i : i + 1]), alone)
        _assert_same_targets(alone, d2l.multibox_target(TINY_ANCHORS[None], lab[None]))
    # a masked (foreground) anchor always has an object class
    assert torch.equal(mask.reshape(4, -1, 4)[..., 0] > 0, cls > 0)

    # the chapter's loop lets each padding row take an anchor: foreground, class -1 + 1 = 0
    d2l_offset, d2l_mask, d2l_cls = d2l.multibox_target(TINY_ANCHORS[None], padded)
    stolen = (d2l_mask.reshape(4, -1, 4)[..., 0] > 0) & (d2l_cls == 0)  # (B, A)
    assert stolen.sum(dim=1).tolist() == [3, 0, 2, 1]  # one anchor per padding row
    assert not torch.equal(d2l_mask, mask)


def test_image_with_only_padding_is_all_background():
    labels = _pad([torch.tensor([[0, 0.1, 0.1, 0.5, 0.5]]), torch.empty(0, 5)])
    offset, mask, cls = multibox_target(TINY_ANCHORS, labels)
    assert cls[1].eq(0).all() and mask[1].eq(0).all() and offset[1].eq(0).all()
    assert cls[0].gt(0).any()
    assert torch.isfinite(offset).all()


def test_float_division_bug():
    # The chapter finds the best pair by argmax over the flattened (A, M) IoU matrix and
    # recovers the anchor as (max_idx / M).long(): float32 division. With M = 8 boxes and
    # anchors past index 2^21, max_idx = 8a + b passes 2^24, where float32 steps by 2:
    # for b = 7, 8a + 7 rounds (ties to even) up to 8a + 8, and (8a + 8) / 8 = a + 1.
    num_gt, first = 8, 2**21
    num_anchors = first + 64
    # filler anchors: far from every box (IoU 0)
    anchors = torch.tensor([0.9, 0.9, 0.95, 0.95]).repeat(num_anchors, 1)
    gt = torch.zeros(num_gt, 4)
    best = []
    for b in range(num_gt):
        gt[b] = torch.tensor([0.1 * b, 0.1, 0.1 * b + 0.1, 0.5])
        # box b's only overlapping anchor: a left part of it, IoU 0.3 + 0.02 b < 0.5, so
        # it is matched by the greedy step alone
        a = first + 1 + 4 * b
        anchors[a] = torch.tensor([0.1 * b, 0.1, 0.1 * b + 0.1 * (0.3 + 0.02 * b), 0.5])
        best.append(a)
    assert num_anchors * num_gt > 2**24
    assert float(torch.tensor(8 * best[7] + 7, dtype=torch.float32)) == 8 * best[7] + 8
    labels = torch.cat((torch.arange(num_gt, dtype=torch.float32)[:, None] % 3, gt), 1)[None]

    _, _, cls = multibox_target(anchors, labels)
    foreground = cls[0].nonzero().flatten()
    assert foreground.tolist() == best
    assert cls[0, foreground].tolist() == [b % 3 + 1 for b in range(num_gt)]

    _, _, d2l_cls = d2l.multibox_target(anchors[None], labels)
    d2l_foreground = d2l_cls[0].nonzero().flatten().tolist()
    assert d2l_foreground == best[:7] + [best[7] + 1]  # box 7 went to the wrong anchor


def test_batch_without_any_box_is_all_background():
    # labels Tensor[B, 0, 5]: a batch of images without objects, unpadded
    offset, mask, cls = multibox_target(TINY_ANCHORS, torch.empty(2, 0, 5))
    assert cls.eq(0).all() and mask.eq(0).all() and offset.eq(0).all()


@st.composite
def _batches(draw):
    """Anchors (A 8..60) and a padded batch (B 1..4, up to 6 boxes per image)."""
    seed = draw(st.integers(0, 2**31 - 1))
    counts = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    g = torch.Generator().manual_seed(seed)
    anchors = _random_boxes(g, draw(st.integers(8, 60)))
    per_image = [_random_labels(g, 1, m, num_classes=5)[0] for m in counts]
    return anchors, per_image


@settings(max_examples=60, deadline=None)
@given(_batches())
def test_target_invariants(batch):
    anchors, per_image = batch
    labels = _pad(per_image)
    offset, mask, cls = multibox_target(anchors, labels)
    matched = match_anchors(anchors, labels[..., 1:], labels[..., 0] >= 0)
    num_anchors = len(anchors)
    assert offset.shape == mask.shape == (len(per_image), 4 * num_anchors)
    assert cls.shape == (len(per_image), num_anchors) and cls.dtype == torch.int64
    for i, lab in enumerate(per_image):
        m = matched[i]
        # every ground-truth box has at least one anchor
        assert set(m[m >= 0].tolist()) == set(range(len(lab)))
        # an anchor with IoU >= 0.5 with some box is foreground
        if len(lab):
            iou = box_iou(anchors, lab[:, 1:])
            assert (m[iou.max(dim=1).values >= 0.5] >= 0).all()
        # class label = class + 1 of the matched box, 0 for background
        expected_cls = torch.zeros(num_anchors, dtype=torch.int64)
        expected_cls[m >= 0] = lab[m[m >= 0], 0].long() + 1
        assert torch.equal(cls[i], expected_cls)
        # mask is 1 exactly on the 4 values of matched anchors; offsets 0 where mask is 0
        assert torch.equal(mask[i].reshape(-1, 4), (m >= 0)[:, None].float().expand(-1, 4))
        assert (offset[i][mask[i] == 0] == 0).all()
        fg = m >= 0
        torch.testing.assert_close(
            offset[i].reshape(-1, 4)[fg], encode_offsets(anchors[fg], lab[m[fg], 1:])
        )


def test_anchor_targets_keep_classes_1_to_c_and_agree_with_the_chapters_api():
    g = torch.Generator().manual_seed(3)
    padded = _pad([_random_labels(g, 1, m)[0] for m in (1, 4, 2, 3)])  # class 0..2, -1 pads
    targets = padded.clone()
    targets[..., 0] += 1  # collate's rows: class 1..3, 0 pads
    ours = anchor_targets(TINY_ANCHORS, targets)
    _assert_same_targets(ours, multibox_target(TINY_ANCHORS, padded))
    assert torch.equal(chapter_rows(targets), padded)
    cls = ours[2]
    assert set(cls[cls > 0].unique().tolist()) <= set(targets[..., 0][targets[..., 0] > 0].tolist())
    assert cls.max() <= 3 and (cls > 0).any()


def _two_maps():
    """A 4x4 map of side-0.25 anchors (indices 0-15, row-major) and a 2x2 map of
    side-0.5 anchors (16-19): one anchor per cell."""
    from tinyssd.anchors import grid_anchors

    return torch.cat([grid_anchors(4, 4, [0.25], [1.0]), grid_anchors(2, 2, [0.5], [1.0])])


def test_grid_levels_reads_the_maps_back_from_the_anchor_order():
    from tinyssd.anchors import AnchorGenerator, grid_levels

    assert grid_levels(_two_maps()) == [16, 4]
    anchors = AnchorGenerator([[0.2, 0.3], [0.5], [0.9]], [[1, 2], [1], [1]])(
        [(3, 5), (2, 2), (1, 1)], "cpu"
    )
    assert grid_levels(anchors) == [3 * 5 * 3, 4, 1]


def test_atss_gives_a_box_between_two_scales_an_anchor_on_each():
    from tinyssd.matching import atss_match

    # box (0, 0, 0.3, 0.4), centre (0.15, 0.2); topk 3 per map by centre distance:
    #   4x4 map: anchors 0, 4, 1 with IoU 0.521, 0.259, 0.074
    #   2x2 map: anchors 16, 18, 17 with IoU 0.480, 0, 0
    # threshold = mean 0.222 + std 0.236 = 0.458: anchors 0 and 16, both centres inside.
    # The chapter's rule (IoU >= 0.5, then each box's best) gives anchor 0 only.
    anchors = _two_maps()
    gt = torch.tensor([[[0.0, 0.0, 0.3, 0.4]]])
    valid = torch.tensor([[True]])
    matched = atss_match(anchors, gt, valid, topk=3)[0]
    assert (matched >= 0).nonzero()[:, 0].tolist() == [0, 16]
    assert (match_anchors(anchors, gt, valid)[0] >= 0).nonzero()[:, 0].tolist() == [0]


def test_atss_leaves_no_box_without_an_anchor():
    from tinyssd.matching import atss_match

    # box (0, 0, 0.25, 0.5): candidates 0, 4, 1 (IoU 0.5, 0.5, 0) and 16, 18, 17 (0.5, 0, 0);
    # threshold 0.25 + 0.274 = 0.524 is above every IoU: the box takes its best anchor, 0
    # (the chapter's rule 2), where IoU >= 0.5 would have taken 0, 4 and 16.
    anchors = _two_maps()
    gt = torch.tensor([[[0.0, 0.0, 0.25, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, False]])  # the padding row takes nothing
    matched = atss_match(anchors, gt, valid, topk=3)[0]
    assert (matched >= 0).nonzero()[:, 0].tolist() == [0]
    assert matched[0] == 0


def test_atss_anchor_targets_label_the_selected_anchors_with_their_class(monkeypatch):
    monkeypatch.setattr(matching, "ATSS_TOPK", 3)  # the candidates worked out above: 0 and 16
    anchors = _two_maps()
    targets = torch.tensor([[[2.0, 0.0, 0.0, 0.3, 0.4]]])
    _, box_mask, cls_targets = anchor_targets(anchors, targets, assigner="atss")
    assert cls_targets[0].nonzero()[:, 0].tolist() == [0, 16]
    assert cls_targets[0, [0, 16]].tolist() == [2, 2]
    assert box_mask.reshape(1, -1, 4)[0, :, 0].nonzero()[:, 0].tolist() == [0, 16]


# --- references: the chapter's rule slowly, and atss_match on its full tables ---------------


def _reference_match_anchors(anchors, gt_boxes, gt_valid, iou_threshold=0.5):
    """The chapter's rule, one image at a time and slowly, as ``match_anchors`` must keep it.

    Step 1: each anchor takes its best box (the first of equals) if its IoU reaches the
    threshold. Step 2, the chapter's greedy loop: every (anchor, box) pair visited in its
    argmax order over the (A, M) table (IoU descending, then lower anchor, then lower box),
    a pair taken when its anchor and its box are both still free. Padding never takes one.
    """
    batch, num_gt = gt_valid.shape
    matched = torch.full((batch, len(anchors)), -1)
    for b in range(batch):
        free_boxes = set(gt_valid[b].nonzero()[:, 0].tolist())
        if not free_boxes:
            continue
        iou = box_iou(anchors, gt_boxes[b])  # (A, M)
        iou[:, ~gt_valid[b]] = -1.0
        best_iou, best_gt = iou.max(dim=1)
        matched[b] = torch.where(best_iou >= iou_threshold, best_gt, -1)
        taken = set()
        for flat in iou.flatten().sort(descending=True, stable=True).indices.tolist():
            anchor, box = divmod(flat, num_gt)
            if box in free_boxes and anchor not in taken:
                matched[b, anchor] = box
                free_boxes.remove(box)
                taken.add(anchor)
                if not free_boxes:
                    break
    return matched


def _reference_atss_match(anchors, gt_boxes, gt_valid, topk=9):
    """``atss_match`` as it was before it was made fast (on the (B, M, A) IoU and distance
    tables), verbatim but for the IoU table, taken from ``box_iou`` image by image, and
    the last step, written out."""
    from tinyssd.anchors import grid_levels

    batch, num_gt = gt_valid.shape
    num_anchors = len(anchors)
    if num_gt == 0:
        return torch.full((batch, num_anchors), -1, device=anchors.device)
    iou = torch.stack([box_iou(boxes, anchors) for boxes in gt_boxes])  # (B, M, A)
    iou = iou.masked_fill(~gt_valid[..., None], -1.0)
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    g_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
    dist = (g_ctr[..., None, :] - a_ctr).square().sum(-1)  # (B, M, A)
    candidates = []
    start = 0
    for count in grid_levels(anchors):
        k = min(topk, count)
        near = dist[..., start : start + count].topk(k, dim=-1, largest=False).indices
        candidates.append(near + start)
        start += count
    cand = torch.cat(candidates, dim=-1)  # (B, M, K)
    cand_iou = iou.gather(2, cand)
    threshold = cand_iou.mean(dim=-1, keepdim=True) + cand_iou.std(dim=-1, keepdim=True)
    ctr = a_ctr[cand]  # (B, M, K, 2)
    inside = (ctr > gt_boxes[..., None, :2]).all(-1) & (ctr < gt_boxes[..., None, 2:]).all(-1)
    positive = (cand_iou >= threshold) & inside & gt_valid[..., None]  # (B, M, K)
    chosen = torch.full_like(iou, -1.0)  # (B, M, A): IoU where positive
    chosen.scatter_(2, cand, torch.where(positive, cand_iou, -1.0))
    best_iou, best_gt = chosen.max(dim=1)  # (B, A)
    matched = torch.where(best_iou >= 0, best_gt, -1)
    has_anchor = torch.zeros_like(gt_valid)
    img, anchor = (matched >= 0).nonzero(as_tuple=True)
    has_anchor[img, matched[img, anchor]] = True
    lonely_img, lonely_gt = (gt_valid & ~has_anchor).nonzero(as_tuple=True)
    best_anchor = iou[lonely_img, lonely_gt].argmax(dim=-1)
    # one by one, the later box winning a shared anchor (one index_put of many rows leaves
    # the winner to torch's threads)
    for b, a, m in zip(lonely_img.tolist(), best_anchor.tolist(), lonely_gt.tolist(), strict=True):
        matched[b, a] = m
    return matched


def _assert_equals_reference(monkeypatch, anchors, targets, iou_threshold=0.5):
    """``anchor_targets`` with both assigners equals, bit for bit, what it gives on the
    reference matchers; and the chapter's API agrees with it."""
    for assigner in ("max_iou", "atss"):
        ours = anchor_targets(anchors, targets, iou_threshold, assigner)
        with monkeypatch.context() as patch:
            patch.setattr(matching, "match_anchors", _reference_match_anchors)
            patch.setattr(matching, "atss_match", _reference_atss_match)
            reference = anchor_targets(anchors, targets, iou_threshold, assigner)
        _assert_identical(ours, reference)
    chapter_api = multibox_target(anchors, chapter_rows(targets), iou_threshold)
    _assert_identical(chapter_api, anchor_targets(anchors, targets, iou_threshold))


def _assert_identical(ours, reference):
    """Bit for bit, NaN for NaN (an inverted box's log-size offset is NaN)."""
    for name, a, b in zip(("offsets", "mask", "classes"), ours, reference, strict=True):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)


def _hostile_targets(g, batch, num_gt, anchors):
    """``Tensor[B, M, 5]`` rows (class 1..3, x1, y1, x2, y2) that stress every tie rule:
    boxes snapped to a coarse grid (equal IoUs with many anchors), copies of other boxes,
    anchors' own boxes, zero-area and inverted boxes, -0.0 coordinates, and padding rows
    (class 0) anywhere in the batch, some images all padding."""
    boxes = _random_boxes(g, batch, num_gt)
    if torch.rand(1, generator=g) < 0.5:
        boxes = (boxes * 8).round() / 8
    pick = lambda p: torch.rand(batch, num_gt, generator=g) < p  # noqa: E731
    copies = pick(0.2)
    original = int(torch.randint(0, max(num_gt, 1), (1,), generator=g))
    boxes[copies] = boxes[:, original : original + 1].expand_as(boxes)[copies]
    own = pick(0.1)
    boxes[own] = anchors[torch.randint(0, len(anchors), (int(own.sum()),), generator=g)]
    flat = pick(0.1)
    boxes[flat] = boxes[flat][:, [0, 1, 0, 3]]  # zero width
    inverted = pick(0.05)
    boxes[inverted] = boxes[inverted][:, [2, 3, 0, 1]]
    boxes[boxes == 0] = -0.0
    cls = torch.randint(1, 4, (batch, num_gt), generator=g).float()
    cls[pick(0.3)] = 0
    cls[torch.rand(batch, generator=g) < 0.15] = 0
    return torch.cat((cls[..., None], boxes), dim=-1)


@pytest.mark.parametrize("seed", range(40))
def test_both_assigners_equal_the_reference_on_hostile_batches(monkeypatch, seed):
    g = torch.Generator().manual_seed(7000 + seed)
    kind = seed % 4
    if kind == 0:  # few random anchors: more boxes than anchors, boxes overlapping none
        anchors = _random_boxes(g, int(torch.randint(4, 40, (1,), generator=g)))
    elif kind == 1:  # equal square anchors on a grid: exact ties everywhere
        anchors = _grid_anchors_4x4()
    else:
        anchors = TINY_ANCHORS
    batch = int(torch.randint(1, 5, (1,), generator=g))
    num_gt = int(torch.randint(0, 60, (1,), generator=g))
    targets = _hostile_targets(g, batch, num_gt, anchors)
    _assert_equals_reference(monkeypatch, anchors, targets, (0.5, 0.3, 0.0, 1.0)[seed // 10])


def _crowd(g, batch, num_gt, side):
    """``Tensor[B, M, 5]`` rows (class 1..3, box): small objects anywhere, some copies."""
    centre = torch.rand(batch, num_gt, 2, generator=g)
    wh = torch.empty(batch, num_gt, 2).uniform_(*side, generator=g)
    boxes = torch.cat(((centre - wh / 2).clamp(0, 1), (centre + wh / 2).clamp(0, 1)), dim=-1)
    boxes[:, 1::9] = boxes[:, ::9][:, : boxes[:, 1::9].shape[1]]
    cls = torch.randint(1, 4, (batch, num_gt, 1), generator=g).float()
    return torch.cat((cls, boxes), dim=-1)


@pytest.mark.parametrize(
    ("batch", "num_gt", "side"), [(2, 300, (0.02, 0.3)), (1, 1000, (0.01, 0.1))]
)
def test_both_assigners_equal_the_reference_on_crowded_images(monkeypatch, batch, num_gt, side):
    # hundreds of small objects per image (aerial images, shelves, crowds): boxes fight over
    # the same anchors, and a small box inside several anchors of one shape has equal IoUs
    g = torch.Generator().manual_seed(num_gt)
    _assert_equals_reference(monkeypatch, TINY_ANCHORS, _crowd(g, batch, num_gt, side))


def test_boxes_whose_best_anchors_all_went_to_others_still_follow_the_chapters_loop(monkeypatch):
    # 1300 boxes on TinySSD's 1364 anchors of a 128-pixel image: most boxes find every one
    # of their best anchors taken by boxes with larger IoUs, and go on to their next ones
    config = tiny_ssd()
    shapes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")
    targets = _crowd(torch.Generator().manual_seed(1), 1, 1300, (0.01, 0.3))
    looked_further = []
    next_anchors = matching._next_anchors
    monkeypatch.setattr(
        matching, "_next_anchors", lambda *args: looked_further.append(1) or next_anchors(*args)
    )
    _assert_equals_reference(monkeypatch, anchors, targets)
    assert len(looked_further) > 100
