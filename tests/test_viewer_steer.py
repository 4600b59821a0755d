"""The viewer's side panel offers steer.py commands for a feature, with copy buttons.

The commands themselves are run in tests/test_steer_script.py; here: the page
data carries them for features only, and a real headless Chromium shows
them when a feature is selected.
"""

from sparse_coding.config.steering import steer_commands
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.viewer import viewer_data, write_viewer


def small_graph() -> Graph:
    graph = Graph(metadata={"script": "fast.py", "prompt": "the sun is", "config": {}})
    graph.add_node(Node.from_id("resid_0.7", activation=1.0, attribution=0.5))
    graph.add_node(Node.from_id("attn_1.3", activation=2.0, attribution=-0.5))
    graph.add_node(Node.from_id("mlp_error_1", attribution=0.2))
    graph.add_edge("resid_0.7", "attn_1.3", 0.3)
    graph.add_edge("resid_0.7", "mlp_error_1", 0.1)
    return graph


def test_page_data_carries_steer_commands_for_features_and_none_for_error_nodes():
    nodes = {node["id"]: node for node in viewer_data(small_graph())["nodes"]}
    assert nodes["mlp_error_1"]["steer"] == []
    lines = dict(nodes["attn_1.3"]["steer"])
    assert lines["ablate"] == "sparse-coding steer --node attn_1.3 --set 0"
    assert lines["config"] == 'STEER:\n  - {node: "attn_1.3", set: 0.0}'
    positioned = dict(steer_commands("resid_9.331@7"))
    assert positioned["ablate"] == "sparse-coding steer --node resid_9.331@7 --set 0"
    assert dict(steer_commands("tc_3.12@5"))["ablate"] == "sparse-coding steer --node tc_3.12@5 --set 0"
    assert steer_commands("mlp_error_3@5") == steer_commands("logit_262") == steer_commands("embed@2") == []


def select_by_search(root, node_id: str) -> None:
    from selenium.webdriver.common.keys import Keys

    search = root.find_element("css selector", ".sc-search")
    search.clear()
    search.send_keys(node_id, Keys.ENTER)


def test_selecting_a_feature_shows_its_commands_each_with_a_copy_button(browser, tmp_path):
    path = write_viewer(small_graph(), tmp_path / "graph.html")
    browser.get(path.as_uri())
    root = browser.find_element("css selector", ".sc-viewer")
    select_by_search(root, "attn_1.3")
    assert root.get_attribute("data-selected") == "attn_1.3"
    codes = [c.text for c in root.find_elements("css selector", ".sc-side .sc-steer-code")]
    assert codes == [text for _, text in steer_commands("attn_1.3")]
    buttons = root.find_elements("css selector", ".sc-side .sc-copy")
    assert len(buttons) == len(codes)
    buttons[0].click()
    assert buttons[0].text in ("copy", "copied")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    select_by_search(root, "mlp_error_1")
    assert root.get_attribute("data-selected") == "mlp_error_1"
    assert not root.find_elements("css selector", ".sc-side .sc-steer")
