"""CurveZMQ key files: what relayd and the client accept, and how they say what is wrong."""

from __future__ import annotations

import pytest
import zmq

from relayd import keys

SHORT = 'metadata\ncurve\n    public-key = "abcde"\n    secret-key = "fghij"\n'


def test_a_written_pair_loads_back(tmp_path):
    public_path, secret_path = keys.keygen(str(tmp_path / "daq"))
    public, secret = keys.load_secret_key(secret_path)
    assert keys.load_public_key(public_path) == public
    assert len(public) == len(secret) == keys.KEY_LENGTH
    # The pair works: libzmq derives the same public key from the secret one.
    assert zmq.curve_public(secret) == public


@pytest.mark.parametrize("loader", [keys.load_public_key, keys.load_secret_key])
def test_keys_of_the_wrong_length_are_refused_naming_the_file(tmp_path, loader):
    path = tmp_path / "short.key_secret"
    path.write_text(SHORT)
    with pytest.raises(ValueError, match=rf"{path}: the (public|secret) key is not a 40"):
        loader(str(path))


def test_a_key_with_characters_outside_z85_is_refused(tmp_path):
    path = tmp_path / "odd.key"
    path.write_text('curve\n    public-key = "' + "~" * 40 + '"\n')   # '~' is not Z85
    with pytest.raises(ValueError, match="not a 40-character Z85"):
        keys.load_public_key(str(path))


def test_a_public_key_file_is_no_secret_key(tmp_path):
    public_path, _ = keys.keygen(str(tmp_path / "relay"))
    with pytest.raises(ValueError, match="holds no secret key"):
        keys.load_secret_key(public_path)


def test_the_authorised_folder_skips_bad_files_and_names_them(tmp_path):
    folder = tmp_path / "authorized"
    folder.mkdir()
    good = [keys.keygen(str(tmp_path / name))[0] for name in ("a", "b")]
    for path in good:
        (folder / (path.rsplit("/", 1)[1])).write_bytes(open(path, "rb").read())
    (folder / "junk.key").write_text("not a certificate\n")
    (folder / "short.key").write_text(SHORT)
    (folder / "ignored.txt").write_text("not a *.key file\n")
    authorised, skipped = keys.load_authorized_keys(str(folder))
    assert authorised == {keys.load_public_key(path) for path in good}
    assert len(skipped) == 2
    assert any(str(folder / "junk.key") in line for line in skipped), skipped
    assert any(str(folder / "short.key") in line for line in skipped), skipped


def test_the_authorised_folder_must_be_a_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        keys.load_authorized_keys(str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert keys.load_authorized_keys(str(empty)) == (frozenset(), [])


def test_key_paths_expand_the_home_directory(tmp_path, monkeypatch):
    """docs/SECURITY.md writes key paths as ~/.relayd/daq1.key_secret, as a shell would."""
    monkeypatch.setenv("HOME", str(tmp_path))
    keys.keygen(str(tmp_path / ".relayd" / "daq1"))
    public, secret = keys.load_secret_key("~/.relayd/daq1.key_secret")
    assert keys.load_public_key("~/.relayd/daq1.key") == public
    found, skipped = keys.load_authorized_keys("~/.relayd")
    assert found == {public} and skipped == []
