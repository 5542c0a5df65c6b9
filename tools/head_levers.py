#!/usr/bin/env python3
"""The head-lever study for real listing photos (issue 11; MODEL_CARD.md,
"What was tried for real listing photos").

Reads the dump of `cargo run --release --example dump_features --
../shared/data/labels.csv DUMP` (embedding + ImageNet logits of every photo,
its mirror image and augmented copies of the train rows) and refits the
four heads the way `photolabel train` does — standardised features, L2
softmax regression, L2 and temperature chosen by hold-out NLL on the same
sha256-of-the-file-name hold-out, final refit on all train rows — with one
lever changed at a time:

  --features emb|emb+logits   the 1608-d embedding, or with the backbone's
                              1000 ImageNet log-probabilities appended
  --listing-weight W          weight of real-listing-source rows in the fit
  --augmented                 the augmented copies as extra training rows
  --balanced-calibration      each source weighs the same in the
                              temperature fit and the L2 choice
  --room-mlp                  the room head a one-hidden-layer MLP (512
                              units, scikit-learn, early stopping) instead
  --blend-mlp STAGES          for these heads (comma list, e.g. room), a
                              one-hidden-layer MLP (512 units) beside the
                              linear head: its epochs, the blend weight w
                              (log-probabilities, 0-1 by 0.25) and one
                              temperature all chosen by hold-out NLL like
                              the L2, then both refitted on all train rows
                              (the MLP unweighted; --mlp-epochs, default 30)

and prints accuracy / ECE / count per level on val, val_real and each
val_real source, plus empty-room precision and recall on val_real. Needs
numpy and scikit-learn (pip). A study tool: the product never runs it.
"""
import argparse
import csv
import hashlib
import os

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

EMB, WIDTH = 1608, 2608  # 1280, 2280 before tools/add_context_features.py
IMAGE = ['indoor', 'outdoor', 'other']
ROOM = ['living_room', 'kitchen', 'bathroom', 'bedroom', 'other_room']
SUB = ['hall_corridor', 'room', 'scullery']
SCENE = ['facade', 'view', 'street', 'balcony-garden', 'building_part', 'no_building']
LISTING = {'es_gray', 'vn_listings_dev', 'zind_empty_home'}
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # --blend-mlp: the MLP's share


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(p, y, w=None):
    return float(np.average(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)), weights=w))


def fit_temperature(z, y, w=None):
    grid = np.exp(np.linspace(np.log(0.2), np.log(5), 200))
    return min(grid, key=lambda t: nll(softmax(z / t), y, w))


def ece(confidence, correct, bins=15):
    b = np.minimum((confidence * bins).astype(int), bins - 1)
    return sum((b == i).mean() * abs(correct[b == i].mean() - confidence[b == i].mean())
               for i in range(bins) if (b == i).any())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--labels', default='../shared/data/labels.csv')
    ap.add_argument('--dump', required=True)
    ap.add_argument('--features', choices=['emb', 'emb+logits'], default='emb')
    ap.add_argument('--listing-weight', type=float, default=1.0)
    ap.add_argument('--augmented', action='store_true')
    ap.add_argument('--balanced-calibration', action='store_true')
    ap.add_argument('--room-mlp', action='store_true')
    ap.add_argument('--blend-mlp', default='')
    ap.add_argument('--mlp-epochs', type=int, default=30)
    ap.add_argument('--l2', default='0.03,0.1,0.3')
    a = ap.parse_args()

    rows = list(csv.DictReader(open(a.labels)))
    index = [line.strip().split(',') for line in open(os.path.join(a.dump, 'index.csv'))]
    x = np.fromfile(os.path.join(a.dump, 'features.f32'), dtype='<f4').reshape(-1, WIDTH)
    row_of = np.array([int(i) for i, _ in index])
    view = np.array([v for _, v in index])
    if a.features == 'emb':
        x = x[:, :EMB]
    else:
        logits = x[:, EMB:] - x[:, EMB:].max(1, keepdims=True)
        x = np.hstack([x[:, :EMB], logits - np.log(np.exp(logits).sum(1, keepdims=True))])
    n = len(rows)
    photo, mirror = np.zeros((n, x.shape[1]), np.float32), np.zeros((n, x.shape[1]), np.float32)
    photo[row_of[view == 'o0']] = x[view == 'o0']
    mirror[row_of[view == 'o1']] = x[view == 'o1']
    is_copy = np.char.startswith(view.astype(str), 'a')
    copy_row, copy_x = row_of[is_copy], x[is_copy]
    split = np.array([r['split'] for r in rows])
    source = np.array([r['source'] for r in rows])
    holdout = np.array([int(hashlib.sha256(r['path'].split('/')[-1].encode()).hexdigest()[:8], 16)
                        % 100 < 15 for r in rows])
    weight = np.array([a.listing_weight if s in LISTING else 1.0 for s in source])

    def label(r, stage):
        if stage == 'image':
            return IMAGE.index(r['image_class'])
        if stage == 'room' and r['image_class'] == 'indoor' and r['room_class']:
            return ROOM.index(r['room_class'])
        if stage == 'subclass' and r['room_class'] == 'other_room' and r['room_subclass']:
            return SUB.index(r['room_subclass'])
        if stage == 'scene' and r['image_class'] == 'outdoor' and r['scene_class']:
            return SCENE.index(r['scene_class'])
        return -1

    def leaf(r):
        if r['image_class'] == 'other':
            return 'other'
        if r['image_class'] == 'indoor':
            return r['room_subclass'] if r['room_class'] == 'other_room' else r['room_class']
        return r['scene_class']

    stages = ['image', 'room', 'subclass', 'scene']
    y = {s: np.array([label(r, s) for r in rows]) for s in stages}
    truth_leaf = np.array([leaf(r) for r in rows])
    labelling = (photo + mirror) / 2
    train = split == 'train'
    probabilities = {}
    for stage in stages:
        ys = y[stage]

        def training_rows(ix):
            parts = [(photo[ix], ys[ix], weight[ix]), (mirror[ix], ys[ix], weight[ix])]
            if a.augmented:
                m = np.isin(copy_row, ix)
                parts.append((copy_x[m], ys[copy_row[m]], weight[copy_row[m]]))
            return [np.concatenate(p) for p in zip(*parts)]

        fit = np.where(train & ~holdout & (ys >= 0))[0]
        cal = np.where(train & holdout & (ys >= 0))[0]
        xf, yf, wf = training_rows(fit)
        mean, std = xf.mean(0), xf.std(0)
        std[std < 1e-6] = 1
        xa, ya, wa = training_rows(np.where(train & (ys >= 0))[0])
        # Standardised once: every fit below reads these.
        sf, sa, sl = (xf - mean) / std, (xa - mean) / std, (labelling - mean) / std
        if a.room_mlp and stage == 'room':
            model = MLPClassifier(hidden_layer_sizes=(512,), alpha=0.1, max_iter=200,
                                  early_stopping=True, random_state=0)
            model.fit(sa, ya)
            probabilities[stage] = model.predict_proba(sl)
            continue
        cw = None
        if a.balanced_calibration:
            counts = {s: (source[cal] == s).sum() for s in set(source[cal])}
            cw = np.array([1.0 / counts[s] for s in source[cal]])
        best = None
        for l2 in map(float, a.l2.split(',')):
            model = LogisticRegression(C=1 / (l2 * wf.sum()), max_iter=300)
            model.fit(sf, yf, sample_weight=wf)
            z = model.decision_function(sl[cal])
            t = fit_temperature(z, ys[cal], cw)
            score = nll(softmax(z / t), ys[cal], cw)
            if best is None or score < best[0]:
                best = (score, l2, t, z)
        _, l2, t, z_cal = best
        model = LogisticRegression(C=1 / (l2 * wa.sum()), max_iter=300)
        model.fit(sa, ya, sample_weight=wa)
        probabilities[stage] = softmax(model.decision_function(sl) / t)
        if stage in a.blend_mlp.split(','):
            # The hold-out log-probabilities of the linear head fitted on
            # the same rows as the MLP, so that w is chosen on unseen photos.
            log_linear = np.log(softmax(z_cal / t))
            classes = np.unique(ya)

            def mlp():
                return MLPClassifier(hidden_layer_sizes=(512,), alpha=1e-3, batch_size=256,
                                     random_state=0)

            def log_proba(net, x):
                return np.log(np.clip(net.predict_proba(x), 1e-12, 1))
            net, history, scores = mlp(), [], []
            for epoch in range(1, a.mlp_epochs + 1):
                net.partial_fit(sf, yf, classes=classes)
                log_net = log_proba(net, sl[cal])
                for w in BLEND_WEIGHTS:
                    z = (1 - w) * log_linear + w * log_net
                    tb = fit_temperature(z, ys[cal], cw)
                    scores.append((nll(softmax(z / tb), ys[cal], cw), epoch, w, tb))
                history.append(min(scores[-len(BLEND_WEIGHTS):])[0])
            score, epochs, w, tb = min(scores)
            print(f"{stage}: linear hold-out NLL {best[0]:.4f}; blend NLL {score:.4f} "
                  f"(MLP epochs {epochs}, w {w}, T {tb:.2f}); per epoch "
                  + ' '.join(f'{h:.4f}' for h in history), flush=True)
            if w > 0:
                net = mlp()
                for _ in range(epochs):
                    net.partial_fit(sa, ya, classes=classes)
                z = (1 - w) * np.log(probabilities[stage]) + w * log_proba(net, sl)
                probabilities[stage] = softmax(z / tb)

    def decide(i):
        p = {s: probabilities[s][i] for s in stages}
        image = IMAGE[p['image'].argmax()]
        confidence = p['image'].max()
        if image == 'other':
            return 'other', confidence
        if image == 'outdoor':
            return SCENE[p['scene'].argmax()], confidence * p['scene'].max()
        room = ROOM[p['room'].argmax()]
        confidence *= p['room'].max()
        if room == 'other_room':
            return SUB[p['subclass'].argmax()], confidence * p['subclass'].max()
        return room, confidence

    def report(mask, name):
        ix = np.where(mask)[0]
        decided = [decide(i) for i in ix]
        predicted = np.array([d for d, _ in decided])
        confidence = np.array([c for _, c in decided])
        scored = truth_leaf[ix] != ''
        correct = predicted == truth_leaf[ix]
        cells = [f"leaf {correct[scored].mean():.4f}/{ece(confidence[scored], correct[scored]):.3f}/{scored.sum()}"]
        for stage in stages:
            m = y[stage][ix] >= 0
            if m.any():
                p = probabilities[stage][ix][m]
                right = p.argmax(1) == y[stage][ix][m]
                cells.append(f"{stage} {right.mean():.4f}/{ece(p.max(1), right):.3f}/{m.sum()}")
        print(f"{name:<16}", '  '.join(cells))
        return predicted, truth_leaf[ix]

    print('accuracy/ECE/rows per level')
    report(split == 'val', 'val')
    report((split == 'val') & (source == 'houses_dataset'), 'val houses')
    predicted, truth = report(split == 'val_real', 'val_real')
    for s in sorted(LISTING):
        report((split == 'val_real') & (source == s), s)
    hits = ((predicted == 'room') & (truth == 'room')).sum()
    print(f"val_real empty room: recall {hits / max(1, (truth == 'room').sum()):.3f}, "
          f"precision {hits / max(1, (predicted == 'room').sum()):.3f}")


if __name__ == '__main__':
    main()
