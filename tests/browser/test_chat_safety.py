"""What a hostile prompt, a hostile model answer or a guessed URL can do to the page: nothing."""

from playwright.sync_api import expect

from tests.upstream import chat_reply

from .pages import create_project, run_django, send_prompt, sign_in

PROMPT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">[x](javascript:window.__pwned=3)'
# Split mid-tag on purpose: the page re-renders the half-received markup after every chunk.
ANSWER_CHUNKS = [
    "Here you go: <scr", "ipt>window.__pwned=4</script>",
    '<img src=x one', 'rror="window.__pwned=5;alert(5)">',
    " [a markdown link](javascript:window.__pwned=6)",
    ' <a href="JaVaScRiPt:window.__pwned=7" onclick="window.__pwned=8">an html link</a>',
    ' <svg><animate onbegin="window.__pwned=9;alert(9)" attributeName="x" dur="1s"/></svg>',
    ' <iframe srcdoc="<script>parent.__pwned=10</script>"></iframe>',
    ' <details open ontoggle="window.__pwned=11">toggle</details>',
    " <form action=\"javascript:window.__pwned=12\"><button>submit</button></form>",
    # Markup that makes a browser fetch a URL could leak the conversation to whoever wrote it.
    " ![a markdown image](/leak/markdown-image)",
    ' <video poster="/leak/video-poster" src="/leak/video"></video><audio src="/leak/audio"></audio>',
    ' <picture><source srcset="/leak/source"></picture><input type="image" src="/leak/input">',
    ' <svg><image href="/leak/svg-image"/><use href="/leak/svg-use#x"/></svg>',
    ' <link rel="stylesheet" href="/leak/css"><object data="/leak/object"></object><embed src="/leak/embed">',
    ' <table background="/leak/table"><tr><td>cell</td></tr></table> The end.',
]
# Everything the messages' text became that could run script (the page's own buttons, the
# answers' actions and a code block's Copy, are not model output).
INSPECT = """() => {
  const nodes = [...document.querySelectorAll("#messages .message-body *:not(.copy-button)")];
  return {
    pwned: window.__pwned ?? null,
    handlers: nodes.flatMap((el) => [...el.attributes].filter((a) => /^on/i.test(a.name)).map((a) => `${el.tagName} ${a.name}`)),
    scriptUrls: nodes.filter((el) => [...el.attributes].some((a) => /^\\s*javascript:/i.test(a.value))).map((el) => el.outerHTML),
    activeElements: nodes.filter((el) => el.matches(
      "script, img, svg, iframe, object, embed, form, button, video, audio, picture, source, link, input:not([type=checkbox][disabled])"
    )).map((el) => el.tagName),
  };
}"""
# A broken image outside the conversation whose onerror does run: once it has, an
# onerror that survived sanitizing inside the conversation would have run too.
CONTROL = """() => new Promise((resolve) => {
  const img = document.createElement("img");
  img.onerror = () => resolve(true);
  img.src = "/no-such-image.png";
  document.body.append(img);
})"""


def expect_inert(page):
    assert page.evaluate(CONTROL)
    assert page.evaluate(INSPECT) == {"pwned": None, "handlers": [], "scriptUrls": [], "activeElements": []}


def test_a_hostile_prompt_and_a_hostile_answer_render_inert(page, fake_upstream):
    dialogs, leaks = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: "/leak/" in request.url and leaks.append(request.url))
    sign_in(page)
    create_project(page, "Hostile markup")
    fake_upstream.set_default(chat_reply(ANSWER_CHUNKS, delay=0.03))

    answer = send_prompt(page, PROMPT)

    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".message-body")).to_contain_text("The end.")
    # The prompt is shown exactly as typed, as text.
    expect(page.locator("#messages article[data-role=user] .message-body")).to_have_text(PROMPT)
    expect_inert(page)

    links = page.locator("#messages a")
    expect(links).to_have_count(2)
    url = page.url
    for link in links.all():
        link.click()
    assert page.evaluate("window.__pwned ?? null") is None
    assert page.url == url and page.context.pages == [page]

    page.reload()  # the same text, now rendered from the stored history
    expect(page.locator("#messages article[data-role=assistant] .message-body")).to_contain_text("The end.")
    expect_inert(page)
    assert dialogs == [] and leaks == []


def test_another_users_project_is_not_found(page, chat_server):
    project_id = run_django(chat_server, (
        "from django.contrib.auth.models import User; from chat.models import Project; "
        "owner, _ = User.objects.get_or_create(username='mallory'); "
        "print(Project.objects.create(owner=owner, name='Mallory secret plans').pk)"
    ))
    sign_in(page)

    response = page.goto(f"/projects/{project_id}/")

    assert response.status == 404
    expect(page.locator("body")).not_to_contain_text("Mallory secret plans")
    expect(page.locator("#messages")).to_have_count(0)
