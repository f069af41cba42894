import torch

from hbdnet.models.matching import MaxIoUAssigner, RandomSampler, box_iou_xyxy


def rpn_assigner(low_quality: bool = True) -> MaxIoUAssigner:
    return MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=low_quality)


IOUS = torch.tensor(
    [
        [0.80, 0.20, 0.50, 0.10, 0.35],
        [0.10, 0.25, 0.60, 0.05, 0.31],
    ]
)


class TestMaxIoUAssigner:
    def test_thresholds_and_ignore_band(self):
        res = rpn_assigner(low_quality=False).assign(IOUS)
        # col 0 positive to gt 0; cols 1, 3 negative; cols 2, 4 in the ignore band [0.3, 0.7).
        assert res.gt_inds.tolist() == [1, 0, -1, 0, -1]
        torch.testing.assert_close(res.max_overlaps, torch.tensor([0.8, 0.25, 0.6, 0.1, 0.35]))

    def test_low_quality_match_gives_each_gt_its_best_box(self):
        res = rpn_assigner().assign(IOUS)
        assert res.gt_inds.tolist() == [1, 0, 2, 0, -1]

    def test_low_quality_needs_min_pos_iou(self):
        ious = torch.tensor([[0.25, 0.1]])
        assert rpn_assigner().assign(ious).gt_inds.tolist() == [0, 0]

    def test_gt_max_assign_all_ties(self):
        ious = torch.tensor([[0.5, 0.5, 0.1]])
        assert rpn_assigner().assign(ious).gt_inds.tolist() == [1, 1, 0]
        only_first = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=True, gt_max_assign_all=False)
        assert only_first.assign(ious).gt_inds.tolist() == [1, -1, 0]

    def test_later_gt_wins_low_quality_ties(self):
        ious = torch.tensor([[0.5, 0.2], [0.5, 0.1]])
        assert rpn_assigner().assign(ious).gt_inds.tolist() == [2, 0]

    def test_rcnn_setting_single_threshold(self):
        a = MaxIoUAssigner(0.5, 0.5, 0.5, match_low_quality=False)
        res = a.assign(torch.tensor([[0.5, 0.49, 0.0]]), gt_labels=torch.tensor([0]))
        assert res.gt_inds.tolist() == [1, 0, 0]
        assert res.labels.tolist() == [0, -1, -1]

    def test_labels_follow_matched_gt(self):
        res = rpn_assigner().assign(IOUS, gt_labels=torch.tensor([3, 7]))
        assert res.labels.tolist() == [3, -1, 7, -1, -1]

    def test_no_gt_all_negative(self):
        res = rpn_assigner().assign(torch.zeros(0, 4))
        assert res.gt_inds.tolist() == [0, 0, 0, 0]

    def test_no_boxes(self):
        res = rpn_assigner().assign(torch.zeros(2, 0))
        assert res.gt_inds.numel() == 0


class TestRandomSampler:
    def assign(self, codes):
        a = MaxIoUAssigner(0.5, 0.5)
        # Build an IoU matrix for one GT that yields the wanted codes (1 pos, 0 neg).
        ious = torch.tensor([[0.9 if c == 1 else 0.1 for c in codes]])
        return a.assign(ious, gt_labels=torch.tensor([0]))

    def test_caps_positives_and_fills_with_negatives(self):
        torch.manual_seed(0)
        res = self.assign([1] * 5 + [0] * 20)
        s = RandomSampler(num=8, pos_fraction=0.25).sample(res, torch.zeros(25, 5))
        assert s.pos_inds.numel() == 2 and s.neg_inds.numel() == 6
        assert (s.pos_inds < 5).all() and (s.neg_inds >= 5).all()
        assert torch.equal(s.pos_inds, s.pos_inds.sort().values)

    def test_few_positives_more_negatives(self):
        res = self.assign([1] + [0] * 20)
        s = RandomSampler(num=8, pos_fraction=0.5).sample(res, torch.zeros(21, 5))
        assert s.pos_inds.numel() == 1 and s.neg_inds.numel() == 7

    def test_neg_pos_upper_bound(self):
        res = self.assign([1, 1] + [0] * 20)
        s = RandomSampler(num=16, pos_fraction=0.5, neg_pos_ub=3).sample(res, torch.zeros(22, 5))
        assert s.pos_inds.numel() == 2 and s.neg_inds.numel() == 6

    def test_ignored_never_sampled(self):
        a = MaxIoUAssigner(0.7, 0.3, match_low_quality=False)
        res = a.assign(torch.tensor([[0.5, 0.5, 0.9, 0.1]]))
        s = RandomSampler(num=10, pos_fraction=0.5).sample(res, torch.zeros(4, 5))
        assert s.pos_inds.tolist() == [2] and s.neg_inds.tolist() == [3]

    def test_add_gt_as_proposals(self):
        res = self.assign([0, 0, 1])
        gts = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5]])
        s = RandomSampler(num=10, pos_fraction=0.5, add_gt_as_proposals=True).sample(
            res, torch.zeros(3, 5), gts, torch.tensor([0])
        )
        assert s.candidates.shape[0] == 4 and torch.equal(s.candidates[0], gts[0])
        assert s.pos_inds.tolist() == [0, 3]
        assert s.pos_is_gt.tolist() == [True, False]
        assert s.pos_assigned_gt_inds.tolist() == [0, 0]
        assert s.neg_inds.tolist() == [1, 2]

    def test_seeded_sampling_is_reproducible(self):
        res = self.assign([1] * 30 + [0] * 300)
        sampler = RandomSampler(num=64, pos_fraction=0.25)
        torch.manual_seed(7)
        a = sampler.sample(res, torch.zeros(330, 5))
        torch.manual_seed(7)
        b = sampler.sample(res, torch.zeros(330, 5))
        assert torch.equal(a.pos_inds, b.pos_inds) and torch.equal(a.neg_inds, b.neg_inds)


def test_box_iou_xyxy_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(box_iou_xyxy(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))
