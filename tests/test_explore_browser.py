"""The explorer in a real browser (issue 21): headless Chromium from the system packages, driven by Selenium.

Starts the server on a free port, loads the page, uploads a photo, clicks a conv3 map, and checks that
the projection and its receptive-field box appear and the top-5 list has five entries. Under CI (CI=true)
it runs, never skips: .ci/run installs chromium and chromium-driver. The screenshot is kept in pytest's
tmp folder, and also at $ZF_EXPLORER_SCREENSHOT when set (docs/figures/explorer/explorer.png for the README).

  ZF_EXPLORER_SCREENSHOT=docs/figures/explorer/explorer.png python -m pytest tests/test_explore_browser.py
"""
import os
import shutil

import pytest
import skimage.data
from PIL import Image

from tests.test_explore import random_model
from zf_jax import explore, pretrained

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 180  # the first views compile on a busy 2-core machine


@pytest.fixture
def browser():
  if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI") == "true":
      pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} are missing under CI: .ci/run must apt-get install chromium "
                  "chromium-driver")
    pytest.skip("no chromium: apt-get install chromium chromium-driver")
  from selenium import webdriver
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
  yield driver
  driver.quit()


def test_upload_click_a_conv3_map_see_its_projection_and_field(browser, tmp_path):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  # The README's screenshot shows the shipped model; the test itself needs only a zfnet64 (random weights).
  model = pretrained.load_model() if os.environ.get("ZF_EXPLORER_SCREENSHOT") else random_model()
  url = explore.serve(model, port=0, warm_up=False)
  try:
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(url)
    top5 = lambda: browser.find_elements(By.CSS_SELECTOR, "#top5 li")
    wait.until(lambda _: len(top5()) == 5)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo)  # 600x400: resized and cropped as validation does
    browser.find_element(By.ID, "upload").send_keys(str(photo))
    wait.until(lambda b: "image=upload" in b.current_url)
    browser.find_element(By.ID, "layer-conv3").click()
    grid = browser.find_element(By.ID, "grid")
    # conv3: 192 maps of 7x7 in 14 columns, 1 px apart: 111 px wide
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", grid) == 111)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#marks .mark")) == 5  # the strongest maps marked
    scale = grid.size["width"] / 111
    channel = browser.execute_script("return grid.strongest[0]")  # the page's layout JSON: the strongest map
    row, column = divmod(channel, 14)
    # the centre of its tile, as an offset from the grid's centre
    ActionChains(browser).move_to_element_with_offset(
        grid, int((column * 8 + 3.5) * scale - grid.size["width"] / 2),
        int((row * 8 + 3.5) * scale - grid.size["height"] / 2)).click().perform()
    projection = browser.find_element(By.ID, "projection")
    wait.until(lambda b: projection.is_displayed() and b.execute_script("return arguments[0].naturalWidth",
                                                                        projection) == 56)
    box = browser.find_element(By.ID, "rfbox")
    assert box.is_displayed() and box.size["width"] > 10 and box.size["height"] > 10
    info = browser.find_element(By.ID, "unit-info").text
    assert f"conv3 map {channel}," in info and "activation 0.000" not in info
    assert len(top5()) == 5 and all("%" in li.text for li in top5())
    wait.until(lambda b: b.find_element(By.ID, "occlusion").is_displayed())
    shot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("ZF_EXPLORER_SCREENSHOT"):
      os.makedirs(os.path.dirname(os.path.abspath(os.environ["ZF_EXPLORER_SCREENSHOT"])), exist_ok=True)
      shutil.copyfile(shot, os.environ["ZF_EXPLORER_SCREENSHOT"])
  finally:
    url.stop()
