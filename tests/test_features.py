"""Feature requests (issue 26): `rectify --region X0,Y0,X1,Y1 --fill V` fills a rectangle of
pixels in the named records, keeping the records; the exact path retrains only the shards that
hold them from the first changed slice, and no old pixel of the region stays anywhere."""

import json

import numpy as np
import pytest

from conftest import cli
from test_erase_integration import search_tree
from test_guarantee import make_workspace, train_subjects, trained_workspace
from tasks.workspace import Workspace
from unlearnflow import features
from unlearnflow.errors import ConfigError
from unlearnflow.features import FeatureEdit

REGION = (2, 2, 6, 6)  # the middle of an 8x8 digit, where its strokes are


# ---- the core: regions, fills, edits -------------------------------------------------------

def test_every_fill_reads_only_pixels_outside_the_region_so_a_second_application_changes_nothing():
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8)).astype(np.uint8)
    for fill in ("0", "200", "mean", "blur"):
        edit = FeatureEdit(REGION, fill)
        once = features.apply(images, edit)
        assert np.array_equal(features.apply(once, edit), once), fill
        outside = np.ones((8, 8), bool)
        outside[2:6, 2:6] = False
        assert np.array_equal(once[:, :, outside], images[:, :, outside]), fill  # only the region changes
        other = images.copy()
        other[:, :, 2:6, 2:6] = 255 - other[:, :, 2:6, 2:6]  # other old content, same surroundings
        assert np.array_equal(features.apply(other, edit), once), fill  # nothing of the old content survives
    assert (features.apply(images, FeatureEdit(REGION, "0"))[:, :, 2:6, 2:6] == 0).all()
    mean = features.apply(images, FeatureEdit(REGION, "mean"))
    expected = np.rint(images[0, 1][np.pad(np.zeros((4, 4), bool), 2, constant_values=True)].mean())
    assert (mean[0, 1, 2:6, 2:6] == expected).all()


@pytest.mark.parametrize("region, message", [
    ("1,2,3", "is not X0,Y0,X1,Y1"), ("a,b,c,d", "is not X0,Y0,X1,Y1"), ("-1,0,2,2", "starts outside the image"),
    ("2,0,2,3", "is empty"), ("3,3,1,5", "is empty")])
def test_a_bad_region_is_one_line_naming_it(region, message):
    with pytest.raises(ConfigError, match=message):
        features.parse_region(region)


@pytest.mark.parametrize("fill", ["256", "-1", "nan", "median", ""])
def test_a_bad_fill_is_one_line_naming_the_valid_choices(fill):
    with pytest.raises(ConfigError, match="valid choices: a number 0..255, mean, blur"):
        features.parse_fill(fill)


def test_a_region_must_fit_the_images_and_mean_or_blur_need_pixels_outside_it():
    with pytest.raises(ConfigError, match="reaches outside the 8x8 images"):
        features.check_fits(FeatureEdit((0, 0, 9, 3), "0"), (1, 8, 8))
    with pytest.raises(ConfigError, match="covers the whole image"):
        features.check_fits(FeatureEdit((0, 0, 8, 8), "blur"), (1, 8, 8))
    features.check_fits(FeatureEdit((0, 0, 8, 8), "0"), (1, 8, 8))  # a number needs nothing else


def test_a_feature_request_keeps_the_ids_of_requests_filed_before_it():
    from unlearnflow.hashing import hash_json
    from unlearnflow.ledger import Request

    label_only = Request("rectify", records=("abc",), label=3)
    as_before = {"kind": "rectify", "subjects": [], "records": ["abc"], "files": [], "label": 3}
    assert label_only.to_json() == as_before and label_only.request_id == "r" + hash_json(as_before)[:16]
    request = Request("rectify", subjects=("s1",), feature=FeatureEdit(REGION, "mean"))
    assert Request.from_json(request.to_json()) == request
    everything = Request("rectify", all_records=True, feature=FeatureEdit(REGION, "0"))
    assert Request.from_json(everything.to_json()) == everything and everything.request_id != request.request_id
    with pytest.raises(ConfigError, match="names records"):
        Request("rectify", subjects=("s1",), label=2)  # a label alone still names records


# ---- the command: bad input is refused before anything is filed ----------------------------

@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("blank") / "ws")


@pytest.mark.parametrize("args, message", [
    (["--region", "0,0,9,3", "--subject", "s001"], "reaches outside the 8x8 images"),
    (["--region", "3,3,3,5", "--subject", "s001"], "is empty"),
    (["--region", "0,0,3,3", "--fill", "300", "--subject", "s001"], "valid choices: a number 0..255, mean, blur"),
    (["--region", "0,0,3,3", "--fill", "median", "--subject", "s001"], "valid choices"),
    (["--region", "0,0,3,3"], "name at least one --subject, --record or --file, or --all-records"),
    (["--subject", "s001"], "give --label (a label correction) or --region"),
    (["--region", "0,0,3,3", "--all-records", "--subject", "s001"], "--all-records names every record")])
def test_bad_regions_and_fills_are_one_line_exit_2_and_nothing_is_filed(blank, capsys, args, message):
    root = blank
    capsys.readouterr()
    assert cli("rectify", "-C", str(root), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err), err
    ledger = root / "ledger" / "requests.jsonl"
    assert not ledger.exists() or ledger.read_text() == ""


# ---- end to end on a digits workspace --------------------------------------------------------

def records_of(root, subject: str):
    """Positions, ids and pixels of ``subject``'s records in the current training split."""
    from unlearnflow.erasure import make_request, resolve
    from unlearnflow.stages import load_split

    ws = Workspace(root)
    params = ws.load_params()
    train, key = load_split(ws.layout, "train"), ws.secret_key(params.data)
    ids = set(resolve(make_request("forget", params.data, key, subjects=[subject]), train, key))
    at = [i for i, rid in enumerate(train.record_ids) if rid in ids]
    return [train.record_ids[i] for i in at], np.asarray(train.images[at])


def region_windows(pixels: np.ndarray, region=REGION) -> dict[str, bytes]:
    """Per record, the bytes from the region's first pixel to its last (row-major: the region's
    old values and the pixels between its rows), and the whole image: what a byte search looks for."""
    x0, y0, x1, y1 = region
    out = {}
    for n, image in enumerate(pixels):
        flat = image[0].tobytes()
        width = image.shape[-1]
        out[f"record {n} region"] = flat[y0 * width + x0:(y1 - 1) * width + x1]
        out[f"record {n} image"] = image.tobytes()
    return out


def unique(root, needles: dict[str, bytes], ids) -> dict[str, bytes]:
    """The needles no other record's pixels hold (an 8x8 digit's window can recur in another's)."""
    from unlearnflow.records import SPLITS, RecordSet
    from unlearnflow.stages import load_split

    everything = RecordSet.concat([load_split(Workspace(root).layout, s) for s in SPLITS])
    others = np.asarray(everything.images[[i for i, r in enumerate(everything.record_ids) if r not in set(ids)]])
    haystack = b"|".join(image.tobytes() for image in others)
    kept = {name: needle for name, needle in needles.items() if needle not in haystack}
    assert kept, "no window of these records is unique to them"
    return kept


def shards_of(root, record_ids) -> dict[str, int]:
    """{shard: first slice (1-based) holding one of ``record_ids``} from the manifests."""
    ws = Workspace(root)
    out = {}
    for k in ws.load_params().partition.shards:
        manifest = json.loads(ws.layout.shard_manifest(k).read_text())
        slices = [r["slice"] for r in manifest["records"] if r["record_id"] in record_ids]
        if slices:
            out[str(k)] = min(slices) + 1
    return out


@pytest.fixture(scope="module")
def filled(prefect_server, tmp_path_factory):
    root = trained_workspace(tmp_path_factory.mktemp("features") / "ws")
    from test_guarantee import production

    subjects = train_subjects(root)
    subject = next(s for s in subjects if (records_of(root, s)[1][:, :, 2:6, 2:6] > 0).any())
    ids, old = records_of(root, subject)
    needles = unique(root, region_windows(old[(old[:, :, 2:6, 2:6] > 0).any(axis=(1, 2, 3))]), ids)  # changed ones
    assert len(search_tree(root, needles)) >= len(needles), "the search must find the old pixels before"
    before_version = int(production(root).version)
    expected_shards = shards_of(root, set(ids))
    assert cli("rectify", "-C", str(root), "--region", ",".join(map(str, REGION)), "--fill", "0",
               "--subject", subject) == 0
    yield {"root": root, "subject": subject, "ids": ids, "old": old, "needles": needles,
           "before_version": before_version, "expected_shards": expected_shards, "subjects": subjects}


@pytest.mark.slow
def test_the_exact_path_fills_the_region_keeps_the_records_and_retrains_only_their_shards(filled):
    from test_guarantee import production
    from unlearnflow.features import content_hash

    root, ids = filled["root"], filled["ids"]
    ws = Workspace(root)
    assert int(production(root).version) == filled["before_version"] + 1  # one version
    now_ids, now = records_of(root, filled["subject"])
    assert now_ids == ids and (now[:, :, 2:6, 2:6] == 0).all()  # the same records, the region filled
    cert = json.loads(sorted(ws.layout.certificates.glob("*.json"))[-1].read_text())
    (request,) = cert["requests"]
    assert request["feature"] == {"region": list(REGION), "fill": "0"} and request["records"] == len(ids)
    changes = {c["record_id"]: c for c in cert["feature_changes"]}
    assert sorted(changes) == sorted(ids) and all(c["request_id"] == request["request_id"] for c in changes.values())
    for rid, old, new in zip(ids, filled["old"], now):
        assert (changes[rid]["before_sha256"], changes[rid]["after_sha256"]) == (content_hash(old), content_hash(new))
    assert cert["erased_record_ids"] == []
    affected = {k: a["first_retrained_slice"] for k, a in cert["affected_shards"].items()}
    assert affected == filled["expected_shards"]  # only their shards, from the first slice holding one of them


@pytest.mark.slow
def test_no_old_pixel_window_of_the_region_remains_anywhere_in_the_workspace(filled):
    root = filled["root"]
    hits = search_tree(root, filled["needles"])  # prepared data, shards, DVC cache, caches, checkpoints, mlruns
    assert hits == [], hits[:5]


@pytest.mark.slow
def test_verify_and_verify_retrain_pass_and_verify_catches_old_content_put_back(filled, capsys):
    from unlearnflow.arrays import NpyFile

    root = filled["root"]
    assert cli("verify", "-C", str(root)) == 0
    assert "PASS  no current constituent was trained on a record's old content" in capsys.readouterr().out
    assert cli("verify", "-C", str(root), "--retrain") == 0
    ws = Workspace(root)
    shard = next(iter(filled["expected_shards"]))
    manifest = json.loads(ws.layout.shard_manifest(int(shard)).read_text())
    row = next(i for i, r in enumerate(manifest["records"]) if r["record_id"] == filled["ids"][0])
    path = ws.layout.shard_images(int(shard))
    saved = path.read_bytes()
    try:
        npy = NpyFile(path)
        data = bytearray(saved)
        data[npy.offset + row * npy.row_bytes:npy.offset + (row + 1) * npy.row_bytes] = filled["old"][0].tobytes()
        path.write_bytes(bytes(data))
        capsys.readouterr()
        assert cli("verify", "-C", str(root)) == 1
        out = capsys.readouterr().out
        assert "FAIL  no current constituent was trained on a record's old content" in out
        assert f"record {filled['ids'][0]} holds other pixels than its edited content" in out
    finally:
        path.write_bytes(saved)


@pytest.mark.slow
def test_an_approximate_method_serves_the_edit_first_and_the_exact_path_supersedes_it(filled, capsys):
    from test_guarantee import production

    root = filled["root"]
    other = next(s for s in filled["subjects"] if s != filled["subject"]
                 and (records_of(root, s)[1][:, :, 0:4, 0:8] > 0).any())
    ids, old = records_of(root, other)
    needles = unique(root, region_windows(old[(old[:, :, 0:4, :] > 0).any(axis=(1, 2, 3))], (0, 0, 8, 4)), ids)
    assert search_tree(root, needles)
    capsys.readouterr()
    assert cli("rectify", "-C", str(root), "--region", "0,0,8,4", "--fill", "mean", "--subject", other,
               "--method", "influence_first_order", "--exact", "later") == 0
    out = capsys.readouterr().out
    assert "with a region filled" in out
    fast = production(root)
    assert fast.tags["guarantee"] == "approximate"
    assert cli("erase", "-C", str(root)) == 0
    exact = production(root)
    assert int(exact.version) == int(fast.version) + 1 and exact.tags.get("guarantee") != "approximate"
    now_ids, now = records_of(root, other)
    assert now_ids == ids and (now[:, :, 0:4, :] == now[:, :, 0:1, 0:1]).all()  # per record one mean value
    assert search_tree(root, needles) == []  # the approximate version's files went with the old ones
    assert cli("verify", "-C", str(root), "--retrain") == 0


def test_an_image_folders_ingest_cache_keeps_no_old_pixel_of_a_filled_region(tmp_path):
    """The purge's step for image folders: the cached decoded pixels of the named records get
    the edit too (the source files stay the operator's); the other records are untouched, and
    a second fill changes nothing."""
    from test_registries import write_hockey_folder
    from unlearnflow.config import DataConfig
    from unlearnflow.datasets.imagefolder import fill_ingest_cache, ingest

    root, cache = tmp_path / "photos", tmp_path / "ingest"
    write_hockey_folder(root)
    cfg = DataConfig(dataset=f"imagefolder:{root}", image_size=16)
    before, _ = ingest(cfg, str(root), cache)
    target = before.record_ids[0]
    edit = FeatureEdit((0, 0, 8, 8), "mean")
    old = np.asarray(before.images[0])
    rows = [old[c, y, 0:8].tobytes() for c in range(3) for y in range(8)]  # the region's old rows, 8 bytes each
    assert all(row in b"".join(p.read_bytes() for p in cache.iterdir()) for row in rows)
    assert fill_ingest_cache(cfg, cache, {target: [edit]}) == 1
    after, stats = ingest(cfg, str(root), cache)
    assert stats["reused"] == stats["files"]  # read from the cache, not decoded again
    assert np.array_equal(np.asarray(after.images[0]), features.apply(old[None], edit)[0])
    assert np.array_equal(np.asarray(after.images[1:]), np.asarray(before.images[1:]))
    stored = b"".join(p.read_bytes() for p in cache.iterdir())
    assert not [row for row in rows if row in stored]
    filled = [p.read_bytes() for p in sorted(cache.iterdir())]
    fill_ingest_cache(cfg, cache, {target: [edit]})
    assert [p.read_bytes() for p in sorted(cache.iterdir())] == filled
