"""timm_pss.timm_compat: timm's two private helpers that timm_pss uses, behind public names, answer as timm does."""
from timm_pss.timm_compat import resolve_pretrained_source, search_split


def test_search_split_finds_the_split_folder_or_a_synonym(tmp_path):
    (tmp_path / 'train').mkdir()
    (tmp_path / 'val').mkdir()
    assert search_split(str(tmp_path), 'train') == str(tmp_path / 'train')
    assert search_split(str(tmp_path), 'validation') == str(tmp_path / 'val')
    assert search_split(str(tmp_path / 'val'), 'validation') == str(tmp_path / 'val')  # no sub-folder: the root


def test_resolve_pretrained_source_says_where_weights_come_from(tmp_path):
    assert resolve_pretrained_source({'source': 'local-dir', 'file': str(tmp_path)}) == ('local-dir', str(tmp_path))
    assert resolve_pretrained_source({'file': 'model.safetensors'}) == ('file', 'model.safetensors')
    assert resolve_pretrained_source({'url': 'https://example.org/w.pth'}) == ('url', 'https://example.org/w.pth')
