"""Linking tracklets into global identities: who, across cameras and videos, is the same person.

Candidate pairs are each tracklet's nearest neighbours by global vector (never all pairs), scored by the KPR part
distance between tracklet aggregates (or the global cosine distance, the baseline). Where and when constrain them:
two tracklets of one video at the same time are different people (the tracker kept them apart; one it lost and
found again is two tracklets of one person, which may link); two cameras that do not see the same place
cannot show one person at once; between connected cameras a person takes at least the fastest transit time, so a
shorter gap is someone else. A tracklet that shows no body part (every part's visibility low: a sliver at the
frame's edge) has nothing to link on and stays alone. A direct move is one between connected cameras within their
[fastest, slowest] window (or within one camera); cameras that are not connected have none. Clustering is average
linkage over the candidate pairs, best first, under a distance threshold: two groups merge only when no pair
between them is forbidden and at least one pair is a direct move (a person seen on two cameras that are not
connected joins both once a sighting in between bridges them). Deterministic: the same tracklets give the same
identities whatever their order.

Linking may start from a Prior: groups that stay together (hand merges; in an incremental run, the identities
already found) and partitions whose sides stay apart (hand splits; in an incremental run, one side per existing
identity, so new tracklets join at most one of them and two existing identities never merge). An incremental run
takes candidate pairs only for the new tracklets, so its cost grows with them, not with the archive.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kpr_model.distance import ReIDEmbeddings, paired_kpr_distance
from workers.cameras import Cameras

KPR_DISTANCE = "kpr"
GLOBAL_DISTANCE = "global"
# A link given by its usual transit time t alone is taken as the window [t * low, t * high].
USUAL_WINDOW = (0.5, 4.0)
# Candidate neighbours are found exactly up to this many tracklets, beyond it in an inverted-file index probing this
# many cells per query (measured by bench.link_identities: candidate-pair recall and time at 100k tracklets).
EXACT_UP_TO = 20_000
PROBES = 12
_PAIR_BLOCK = 512


@dataclass(frozen=True)
class Tracklets:
    """Tracklet summaries to link: ids, video, camera, UTC span (seconds) and aggregated embedding of each."""

    track_ids: Sequence[str]
    video_ids: Sequence[str]
    camera_ids: Sequence[str]
    t_start: np.ndarray
    t_end: np.ndarray
    embeddings: ReIDEmbeddings

    def __len__(self) -> int:
        return len(self.track_ids)

    def take(self, indices: np.ndarray) -> "Tracklets":
        """The tracklets at ``indices``, in that order."""
        pick = [int(i) for i in indices]
        return Tracklets([self.track_ids[i] for i in pick], [self.video_ids[i] for i in pick],
                         [self.camera_ids[i] for i in pick], np.asarray(self.t_start, np.float64)[indices],
                         np.asarray(self.t_end, np.float64)[indices], self.embeddings.select(indices))

    def ordered(self) -> tuple["Tracklets", np.ndarray]:
        """The tracklets sorted by track id (what makes linking independent of input order) and that order."""
        order = np.array(sorted(range(len(self)), key=lambda i: self.track_ids[i]), dtype=np.int64)
        return self.take(order), order


@dataclass(frozen=True)
class Topology:
    """Which cameras connect, with the [fastest, slowest] transit seconds between them (both ways); a window that
    starts at 0 s means the two cameras see the same place, so one person may be on both at once."""

    windows: dict[tuple[str, str], tuple[float, float]]

    def window(self, first: str, second: str) -> tuple[float, float] | None:
        """The transit window between two cameras, either way (None: not connected)."""
        return self.windows.get((first, second) if first <= second else (second, first))

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> "Topology":
        """The links of a cameras file: a window given as [fastest, slowest], else one around the usual time
        (USUAL_WINDOW); a link given both ways keeps the first camera's (in id order)."""
        windows: dict[tuple[str, str], tuple[float, float]] = {}
        for camera_id in sorted(cameras.cameras):
            camera = cameras.cameras[camera_id]
            for other, usual in sorted(camera.connects_to.items()):
                given = camera.transit_windows.get(other) or (usual * USUAL_WINDOW[0], usual * USUAL_WINDOW[1])
                windows.setdefault((camera_id, other) if camera_id <= other else (other, camera_id), given)
        return cls(windows)


@dataclass(frozen=True)
class LinkSettings:
    """How tracklets are linked: the distance, the threshold under which groups merge, the candidate neighbours per
    tracklet, and which constraints hold (each can be turned off, for ablations)."""

    threshold: float
    neighbours: int = 15
    distance: str = KPR_DISTANCE
    same_video: bool = True
    overlap: bool = True
    transit: bool = True
    direct_moves: bool = True  # False: only the fastest transit holds, any two groups may merge
    # A tracklet none of whose parts reaches this (aggregated) visibility shows no body to link on, e.g. a
    # sliver at the frame's edge: it links to nothing (KPR distance only; 0: every tracklet links).
    min_visibility: float = 0.2
    holistic_weight: float = 1.0  # the holistic entry's weight in the KPR distance (a hybrid model's setting)

    def __post_init__(self) -> None:
        if self.distance not in (KPR_DISTANCE, GLOBAL_DISTANCE):
            raise ValueError(f"unknown distance {self.distance!r} (known: {KPR_DISTANCE}, {GLOBAL_DISTANCE})")
        if not self.threshold > 0 or self.neighbours < 1:
            raise ValueError(f"threshold must be > 0 and neighbours >= 1, got {self.threshold}, {self.neighbours}")


@dataclass(frozen=True)
class Prior:
    """What a linking starts from, by track id: groups whose tracklets stay one identity, and partitions (track id
    -> side) whose tracklets on different sides never share one. Ids the linking is not given are ignored."""

    together: Sequence[Sequence[str]] = ()
    apart: Sequence[dict[str, int]] = ()

    @classmethod
    def from_edits(cls, edits: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> "Prior":
        """The constraints of hand edits replayed in order: ("merge", [tracklets]) keeps them together and drops
        from earlier splits the side it contradicts; ("split", [taken off, left]) keeps the two sets apart and
        divides the groups of earlier merges that held both."""
        together: list[set[str]] = []
        apart: list[tuple[set[str], set[str]]] = []
        for kind, groups in edits:
            if kind == "merge":
                given = set(groups[0])
                merged = given.union(*(group for group in together if group & given))
                together = [group for group in together if not group & merged] + [merged]
                apart = [(taken - merged, left) if taken & merged and left & merged else (taken, left)
                         for taken, left in apart]
            elif kind == "split":
                taken, left = set(groups[0]), set(groups[1])
                together = [part for group in together for part in (group & taken, group - taken) if len(part) > 1]
                apart.append((taken, left))
            else:
                raise ValueError(f"unknown edit {kind!r} (known: merge, split)")
        return cls([sorted(group) for group in together],
                   [{t: 0 for t in taken} | {t: 1 for t in left} for taken, left in apart if taken and left])

    def with_identities(self, identities: Sequence[Sequence[str]]) -> "Prior":
        """This prior for an incremental run: each of ``identities`` (track ids) stays together, apart from the
        others."""
        sealed = {track_id: number for number, members in enumerate(identities) for track_id in members}
        return Prior([*self.together, *identities], [*self.apart, sealed])


@dataclass(frozen=True)
class Linking:
    """The outcome, aligned with the input tracklets: each one's identity (index of the group, numbered by the
    group's earliest tracklet) and its link confidence in [0, 1] (1 - distance to its nearest fellow / threshold;
    1 for a tracklet alone, 0 for one that shows no part to link on)."""

    identity: np.ndarray
    confidence: np.ndarray
    candidate_pairs: int

    @property
    def identities(self) -> int:
        """How many identities the tracklets form."""
        return int(self.identity.max()) + 1 if len(self.identity) else 0


def _camera_rule(first: str, second: str, topology: Topology | None, settings: LinkSettings) -> tuple[float, float]:
    """(shortest gap allowed, longest gap of a direct link) between tracklets of cameras ``first`` and ``second``."""
    if first == second:
        return -np.inf, np.inf
    window = None if topology is None else topology.window(first, second)
    shared_view = window is not None and window[0] == 0
    shortest = 0.0 if settings.overlap and not shared_view else -np.inf
    if not settings.transit or topology is None:
        return shortest, np.inf
    longest = np.inf if not settings.direct_moves else -np.inf if window is None else window[1]
    return shortest if window is None or window[0] == 0 else window[0], longest


class _Rules:
    """The constraints on one set of tracklets: which pairs may never share an identity, which may link directly."""

    def __init__(self, tracklets: Tracklets, topology: Topology | None, settings: LinkSettings) -> None:
        cameras = sorted(set(tracklets.camera_ids))
        index = {camera: i for i, camera in enumerate(cameras)}
        self.camera = np.array([index[c] for c in tracklets.camera_ids], np.int64)
        videos = {video: i for i, video in enumerate(sorted(set(tracklets.video_ids)))}
        self.video = np.array([videos[v] for v in tracklets.video_ids], np.int64)
        self.start, self.end = np.asarray(tracklets.t_start, np.float64), np.asarray(tracklets.t_end, np.float64)
        self.same_video = settings.same_video
        rule = np.array([[_camera_rule(first, second, topology, settings) for second in cameras] for first in cameras],
                        np.float64).reshape(len(cameras), len(cameras), 2)
        # The shortest gap allowed between tracklets of two cameras (negative: overlapping in time), and the
        # longest gap of a direct link between them (-inf: no direct link).
        self.min_gap, self.max_gap = rule[..., 0], rule[..., 1]

    def gap(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Seconds from the end of the earlier tracklet to the start of the later one (negative: they overlap)."""
        return np.maximum(self.start[second] - self.end[first], self.start[first] - self.end[second])

    def forbidden(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Which pairs (index arrays, broadcast) can never be one person."""
        clash = self.gap(first, second) < self.min_gap[self.camera[first], self.camera[second]]
        if self.same_video:  # only at the same time: a tracker splits one person's passage when it loses them
            clash |= (self.video[first] == self.video[second]) & (self.gap(first, second) < 0)
        return clash

    def direct(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Which pairs are a direct move: not forbidden, and within the transit window of their cameras."""
        within = self.gap(first, second) <= self.max_gap[self.camera[first], self.camera[second]]
        return within & ~self.forbidden(first, second)


def nearest_pairs(vectors: np.ndarray, neighbours: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (of ``rows``, default all) ``neighbours`` nearest other rows by cosine of the (unit) global
    vectors, as distinct pairs (i < j, sorted): the candidate pairs, O(rows * neighbours) of them. Exact up to
    EXACT_UP_TO vectors; beyond, from an inverted-file index (approximate_neighbours), whose cost grows with
    N * sqrt(N) instead of N * N."""
    import torch

    count = min(neighbours, len(vectors) - 1)
    queries = torch.arange(len(vectors)) if rows is None else torch.from_numpy(np.asarray(rows, np.int64))
    if count < 1 or not len(queries):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    if len(vectors) <= EXACT_UP_TO:
        found = _top(matrix, queries, torch.arange(len(matrix)), count)
    else:
        found = approximate_neighbours(matrix, queries, count)
    pairs = np.unique(np.sort(found, axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _top(matrix, queries, candidates, count: int) -> np.ndarray:
    """(query, neighbour) rows: each of ``queries``' ``count`` nearest of ``candidates`` (indices into ``matrix``),
    itself left out, block by block (torch's top-k is about twice as fast as numpy's argpartition)."""
    import torch

    found = []
    pool = matrix[candidates]
    take = min(count, len(candidates) - 1)
    for start in range(0, len(queries), _PAIR_BLOCK):
        chosen = queries[start:start + _PAIR_BLOCK]
        similarity = matrix[chosen] @ pool.T
        similarity[chosen[:, None] == candidates[None, :]] = -torch.inf
        top = candidates[torch.topk(similarity, take, dim=1).indices].numpy()
        found.append(np.stack([np.repeat(chosen.numpy(), take), top.reshape(-1)], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def approximate_neighbours(matrix, queries, count: int, probes: int = PROBES) -> np.ndarray:
    """(query, neighbour) rows from an inverted-file index: the unit vectors are cut into about sqrt(N) cells by
    spherical k-means (seeded: the same vectors give the same cells), and each cell's queries look for their
    neighbours among the members of the ``probes`` cells whose centres are nearest its own."""
    import torch

    cells, centres = _spherical_kmeans(matrix, max(1, int(round(len(matrix) ** 0.5))))
    order = torch.argsort(cells, stable=True)
    bounds = torch.searchsorted(cells[order], torch.arange(len(centres) + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(len(centres))]
    asked = torch.zeros(len(matrix), dtype=torch.bool)
    asked[queries] = True
    near = torch.topk(centres @ centres.T, min(probes, len(centres)), dim=1).indices
    found = [np.empty((0, 2), np.int64)]
    for cell in range(len(centres)):
        here = members[cell][asked[members[cell]]]
        if len(here):
            pool = torch.cat([members[int(c)] for c in near[cell]])
            found.append(_top(matrix, here, pool, count))
    return np.concatenate(found)


def _spherical_kmeans(matrix, cells: int, rounds: int = 8) -> tuple:
    """(each vector's cell, the unit cell centres) after ``rounds`` of spherical k-means from a seeded sample."""
    import torch

    generator = torch.Generator().manual_seed(0)
    centres = matrix[torch.randperm(len(matrix), generator=generator)[:cells]].clone()
    for _ in range(rounds + 1):
        cell = torch.cat([torch.argmax(matrix[i:i + 65536] @ centres.T, dim=1) for i in range(0, len(matrix), 65536)])
        sums = torch.zeros_like(centres).index_add_(0, cell, matrix)
        norms = sums.norm(dim=1, keepdim=True)
        centres = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centres)
    return cell, centres


def pair_distances(embeddings: ReIDEmbeddings, first: np.ndarray, second: np.ndarray,
                   settings: LinkSettings) -> np.ndarray:
    """The distance of each pair of tracklet aggregates: KPR part distance, or the global cosine distance."""
    if settings.distance == GLOBAL_DISTANCE:
        return 1.0 - np.einsum("nd,nd->n", embeddings.global_emb[first], embeddings.global_emb[second])
    return paired_kpr_distance(embeddings.select(first), embeddings.select(second),
                               holistic_weight=settings.holistic_weight)


def link_tracklets(tracklets: Tracklets, topology: Topology | None, settings: LinkSettings, prior: Prior = Prior(),
                   new: np.ndarray | None = None) -> Linking:
    """Group ``tracklets`` into identities (see the module docstring), starting from ``prior``; with ``new``
    (indices), only those tracklets' candidate pairs are taken (an incremental run). Aligned with the input."""
    if not len(tracklets):
        return Linking(np.empty(0, np.int64), np.empty(0, np.float32), 0)
    ordered, order = tracklets.ordered()
    rules = _Rules(ordered, topology, settings)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    rows = None if new is None else np.sort(position[np.asarray(new, np.int64)])
    first, second = nearest_pairs(ordered.embeddings.global_emb, settings.neighbours, rows)
    unseen = _unseen(ordered.embeddings, settings)
    keep = ~rules.forbidden(first, second) & ~unseen[first] & ~unseen[second]
    first, second = first[keep], second[keep]
    distances = pair_distances(ordered.embeddings, first, second, settings).astype(np.float64)
    groups = _cluster(_Start.of(ordered, prior), first, second, distances, rules, settings.threshold)
    identity, confidence = _label(ordered, groups, first, second, distances, settings.threshold)
    confidence[unseen] = 0.0
    aligned_identity, aligned_confidence = np.empty_like(identity), np.empty_like(confidence)
    aligned_identity[order], aligned_confidence[order] = identity, confidence
    return Linking(aligned_identity, aligned_confidence, int(len(first)))


def _unseen(embeddings: ReIDEmbeddings, settings: LinkSettings) -> np.ndarray:
    """Which tracklets show no part at settings.min_visibility (KPR distance only): they link to nothing."""
    visibility = embeddings.visibility
    if settings.distance != KPR_DISTANCE or not visibility.shape[1]:
        return np.zeros(len(visibility), bool)
    return visibility.max(axis=1) < settings.min_visibility


@dataclass(frozen=True)
class _Start:
    """The groups clustering starts from (tracklet indices, keyed by a member) and, per group, the sides of each
    partition of the prior that it holds (partition -> sides; two sides: it can join neither)."""

    members: dict[int, list[int]]
    sides: dict[int, dict[int, set[int]]]
    group_of: np.ndarray

    @classmethod
    def of(cls, tracklets: Tracklets, prior: Prior) -> "_Start":
        """Singletons, except the prior's together groups (merged where they share a tracklet)."""
        index = {track_id: i for i, track_id in enumerate(tracklets.track_ids)}
        parent = list(range(len(tracklets)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for group in prior.together:
            known = [index[t] for t in group if t in index]
            for other in known[1:]:
                parent[root(other)] = root(known[0])
        group_of = np.array([root(i) for i in range(len(tracklets))], np.int64)
        members: dict[int, list[int]] = {}
        for i, group in enumerate(group_of.tolist()):
            members.setdefault(group, []).append(i)
        sides: dict[int, dict[int, set[int]]] = {group: {} for group in members}
        for number, partition in enumerate(prior.apart):
            for track_id, side in partition.items():
                if track_id in index:
                    sides[int(group_of[index[track_id]])].setdefault(number, set()).add(side)
        return cls(members, sides, group_of)


def _kept_apart(first: dict[int, set[int]], second: dict[int, set[int]]) -> bool:
    """Whether two groups hold different sides of one of the prior's partitions."""
    return any(len(first[number] | second[number]) > 1 for number in first.keys() & second.keys())


def _cluster(start: _Start, first: np.ndarray, second: np.ndarray, distances: np.ndarray, rules: _Rules,
             threshold: float) -> list[list[int]]:
    """Average linkage over the candidate pairs from the ``start`` groups: merge the closest two groups (mean
    distance of the pairs between them) while it is under ``threshold``, never two groups that hold a forbidden pair
    or sides the prior keeps apart; the groups, as member lists."""
    members = {group: list(found) for group, found in start.members.items()}
    sides = {group: dict(held) for group, held in start.sides.items()}
    links: dict[int, dict[int, list[float]]] = {group: {} for group in members}
    for a, b, d in zip(start.group_of[first].tolist(), start.group_of[second].tolist(), distances.tolist()):
        if a != b:
            total = links[a].setdefault(b, [0.0, 0.0])
            total[0] += d
            total[1] += 1.0
            links[b][a] = total
    version = dict.fromkeys(members, 0)
    heap = [(total / count, a, b, 0, 0) for a in links for b, (total, count) in links[a].items()
            if a < b and total / count < threshold]
    heapq.heapify(heap)
    while heap:
        mean, a, b, seen_a, seen_b = heapq.heappop(heap)
        if a not in members or b not in members or version[a] != seen_a or version[b] != seen_b:
            continue
        left, right = np.array(members[a])[:, None], np.array(members[b])[None, :]
        if _kept_apart(sides[a], sides[b]) or rules.forbidden(left, right).any():
            del links[a][b], links[b][a]  # a bigger group holding either still holds the forbidden pair
            continue
        if not rules.direct(left, right).any():
            continue  # no direct move between them yet: another group may bridge them later
        keep, gone = (a, b) if len(members[a]) >= len(members[b]) else (b, a)
        members[keep].extend(members.pop(gone))
        for number, held in sides.pop(gone).items():
            sides[keep][number] = sides[keep].get(number, set()) | held
        del links[keep][gone]
        for other, (total, count) in links.pop(gone).items():
            if other == keep:
                continue
            del links[other][gone]
            merged = links[keep].setdefault(other, [0.0, 0.0])
            merged[0] += total
            merged[1] += count
            links[other][keep] = merged
        version[keep] += 1
        for other, (total, count) in links[keep].items():
            if total / count < threshold:
                low, high = min(keep, other), max(keep, other)
                heapq.heappush(heap, (total / count, low, high, version[low], version[high]))
    return list(members.values())


def _label(tracklets: Tracklets, groups: list[list[int]], first: np.ndarray, second: np.ndarray,
           distances: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Identity numbers (groups in order of their earliest tracklet: start time, then id) and link confidences."""
    earliest = [min(group, key=lambda i: (tracklets.t_start[i], tracklets.track_ids[i])) for group in groups]
    ranked = sorted(range(len(groups)), key=lambda g: (tracklets.t_start[earliest[g]], tracklets.track_ids[earliest[g]]))
    identity = np.empty(len(tracklets), np.int64)
    for number, g in enumerate(ranked):
        identity[groups[g]] = number
    nearest = np.full(len(tracklets), np.inf)
    fellow = identity[first] == identity[second]
    np.minimum.at(nearest, first[fellow], distances[fellow])
    np.minimum.at(nearest, second[fellow], distances[fellow])
    confidence = np.where(np.isfinite(nearest), np.clip(1.0 - nearest / threshold, 0.0, 1.0), 1.0)
    return identity, confidence.astype(np.float32)
