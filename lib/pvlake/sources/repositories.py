"""Repository clients: which files a dataset's DOI or URL stands for, and where to get them.

In the manner of pvlib ``iotools``: ``get_<repository>`` asks the service (one or a few
JSON requests) and ``read_<repository>`` turns its JSON answer into a :class:`Record`, so
the parsing is tested on stored answers and the network code at the protocol level.

- Zenodo: ``10.5281/zenodo.<id>`` -> ``GET /api/records/<id>`` (files with md5).
- Figshare: ``10.6084/m9.figshare.<id>[.v<n>]`` -> ``GET /v2/articles/<id>[/versions/<n>]``
  (files with md5).
- ScienceBase (USGS): an item id, item URL, or a DOI resolved with the doi.org handle API
  -> ``GET /catalog/item/<id>?format=json`` (files with md5 where ScienceBase has one).
- GitHub: a repository, ``tree``/``blob`` or ``raw.githubusercontent.com`` URL; the branch
  is pinned to its commit, the tree listed once, and every file fetched from that commit
  (git blob SHA-1 checked).
- URL (``url``/``direct_download``): one file, no listing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import requests

from .http import RepositoryError, get_json

TOKEN_ENV = {"zenodo": "ZENODO_TOKEN", "figshare": "FIGSHARE_TOKEN", "github": "GITHUB_TOKEN"}
"""Environment variables holding optional access tokens (never configuration)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file a repository offers.

    Attributes
    ----------
    name : str
        POSIX path relative to the record (GitHub paths keep their folders).
    url : str
        Where its bytes are.
    size_bytes : int or None
        Size the repository states.
    checksum : str or None
        ``"<algorithm>:<hex>"`` the repository states (md5, git-sha1, ...).
    file_id : str or None
        The repository's own id of the file, where it has one (Zenodo, Figshare).
    """

    name: str
    url: str
    size_bytes: int | None = None
    checksum: str | None = None
    file_id: str | None = None


@dataclass(frozen=True)
class Record:
    """What a DOI or URL resolves to.

    Attributes
    ----------
    source : str
        The DOI or URL as the manifest gives it.
    url : str
        The API address the file list came from (the file itself for a URL).
    version : str or None
        The repository's version of the record (Zenodo/Figshare version, GitHub commit).
    title : str or None
    files : tuple of RemoteFile
    named_files : bool
        True when the source names its file(s) itself (a file URL): they are taken
        whatever the manifest's file filters.
    """

    source: str
    url: str
    version: str | None
    title: str | None
    files: tuple[RemoteFile, ...]
    named_files: bool = False


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the services: the real ones by default, or a mirror or test server
    from the workflow config's ``repositories`` block (:meth:`from_config`). ``doi`` is
    the doi.org handle API, asked only for DOIs whose prefix names no repository."""

    zenodo: str = "https://zenodo.org/api"
    figshare: str = "https://api.figshare.com/v2"
    sciencebase: str = "https://www.sciencebase.gov/catalog"
    github_api: str = "https://api.github.com"
    github_raw: str = "https://raw.githubusercontent.com"
    doi: str = "https://doi.org"

    @classmethod
    def from_config(cls, repositories: dict | None) -> Endpoints:
        """Endpoints from the workflow config's ``repositories`` block.

        Parameters
        ----------
        repositories : dict or None
            ``{"zenodo": {"api_url": ...}, "figshare": {"api_url": ...}, "sciencebase":
            {"api_url": ...}, "github": {"api_url": ..., "raw_url": ...}}``; a key left
            out keeps the real service. Trailing slashes are dropped, since every client
            appends ``/<path>``.
        """
        repositories = repositories or {}

        def url(service: str, key: str, default: str) -> str:
            return (repositories.get(service) or {}).get(key, default).rstrip("/")

        return cls(
            zenodo=url("zenodo", "api_url", cls.zenodo),
            figshare=url("figshare", "api_url", cls.figshare),
            sciencebase=url("sciencebase", "api_url", cls.sciencebase),
            github_api=url("github", "api_url", cls.github_api),
            github_raw=url("github", "raw_url", cls.github_raw),
        )

    def auth_headers(self, environ: dict | None = None) -> dict[str, str]:
        """``Authorization`` values by host, from the tokens set in the environment."""
        environ = os.environ if environ is None else environ
        schemes = {
            "zenodo": ("Bearer", (self.zenodo,)),
            "figshare": ("token", (self.figshare,)),
            "github": ("Bearer", (self.github_api, self.github_raw)),
        }
        out = {}
        for service, (scheme, urls) in schemes.items():
            token = environ.get(TOKEN_ENV[service])
            if token:
                out.update({urlsplit(u).netloc: f"{scheme} {token}" for u in urls})
        return out


def _bare_doi(doi: str) -> str:
    return re.sub(r"^(https?://(dx\.)?doi\.org/|doi:)", "", doi.strip(), flags=re.IGNORECASE)


# --- Zenodo -------------------------------------------------------------------------

def zenodo_record_id(doi: str) -> str:
    """Record id in a Zenodo DOI (``10.5281/zenodo.123``) or record URL."""
    text = _bare_doi(doi)
    match = re.fullmatch(r"10\.5281/zenodo\.(\d+)", text, re.IGNORECASE) or re.search(
        r"zenodo\.org/(?:api/)?records?/(\d+)", text
    )
    if not match:
        raise ValueError(f"{doi!r} is not a Zenodo DOI (10.5281/zenodo.<id>) or record URL")
    return match.group(1)


def _zenodo_entries(files) -> list[dict]:
    # Zenodo answers with a list of files; its InvenioRDM form nests them in "entries".
    if isinstance(files, dict):
        return list((files.get("entries") or {}).values())
    return list(files or [])


def read_zenodo_record(record: dict, api_url: str, source: str = "") -> Record:
    """A Zenodo record (``/api/records/<id>`` JSON) as a :class:`Record`."""
    record_id = record["id"]
    files = []
    for entry in _zenodo_entries(record.get("files")):
        name = entry.get("key") or entry["filename"]
        links = entry.get("links") or {}
        url = links.get("content") or links.get("self") or (
            f"{api_url}/records/{record_id}/files/{quote(name)}/content"
        )
        checksum = entry.get("checksum")
        if checksum and ":" not in checksum:
            checksum = f"md5:{checksum}"
        file_id = entry.get("id") or entry.get("file_id")
        files.append(RemoteFile(name, url, entry.get("size"), checksum, None if file_id is None else str(file_id)))
    meta = record.get("metadata") or {}
    return Record(
        source=source, url=f"{api_url}/records/{record_id}",
        version=meta.get("version"),
        title=meta.get("title") or record.get("title"), files=tuple(files),
    )


def get_zenodo_record(doi: str, session: requests.Session, api_url: str = Endpoints.zenodo) -> Record:
    """Files of a Zenodo record.

    Parameters
    ----------
    doi : str
        ``10.5281/zenodo.<id>`` (bare, ``doi:`` or ``https://doi.org/`` form) or a record URL.
    session : requests.Session
    api_url : str
        Base of the Zenodo REST API.
    """
    record = get_json(session, f"{api_url}/records/{zenodo_record_id(doi)}")
    return read_zenodo_record(record, api_url, doi)


# --- Figshare -----------------------------------------------------------------------

def figshare_article(doi: str) -> tuple[str, str | None]:
    """Article id and version (None: latest) in a Figshare DOI ``10.6084/m9.figshare.<id>[.v<n>]``."""
    match = re.fullmatch(r"10\.6084/m9\.figshare\.(\d+)(?:\.v(\d+))?", _bare_doi(doi), re.IGNORECASE)
    if not match:
        raise ValueError(f"{doi!r} is not a Figshare article DOI (10.6084/m9.figshare.<id>[.v<n>])")
    return match.group(1), match.group(2)


def read_figshare_article(article: dict, url: str, source: str = "") -> Record:
    """A Figshare article (``/v2/articles/<id>[/versions/<n>]`` JSON) as a :class:`Record`."""
    files = []
    for entry in article.get("files") or []:
        md5 = entry.get("computed_md5") or entry.get("supplied_md5")
        files.append(RemoteFile(entry["name"], entry["download_url"], entry.get("size"), f"md5:{md5}" if md5 else None,
                                None if entry.get("id") is None else str(entry["id"])))
    version = article.get("version")
    return Record(source=source, url=url, version=None if version is None else str(version),
                  title=article.get("title"), files=tuple(files))


def get_figshare_article(doi: str, session: requests.Session, api_url: str = Endpoints.figshare) -> Record:
    """Files of a Figshare article, at the version the DOI names (else the latest)."""
    article_id, version = figshare_article(doi)
    url = f"{api_url}/articles/{article_id}" + (f"/versions/{version}" if version else "")
    return read_figshare_article(get_json(session, url), url, doi)


# --- ScienceBase --------------------------------------------------------------------

SCIENCEBASE_ITEM = re.compile(r"(?:^|/catalog/item/)([0-9a-f]{24})(?:$|[/?#])", re.IGNORECASE)


def resolve_doi(doi: str, session: requests.Session, doi_url: str = Endpoints.doi) -> str:
    """The URL a DOI points to, from the doi.org handle API (no landing page is fetched)."""
    handle = get_json(session, f"{doi_url}/api/handles/{_bare_doi(doi)}")
    for value in handle.get("values") or []:
        if value.get("type") == "URL":
            return value["data"]["value"]
    raise RepositoryError(f"{doi_url}/api/handles/{_bare_doi(doi)}", "the DOI has no URL")


def read_sciencebase_item(item: dict, url: str, source: str = "") -> Record:
    """A ScienceBase item (``/catalog/item/<id>?format=json``) as a :class:`Record`."""
    files = []
    for entry in item.get("files") or []:
        checksum = entry.get("checksum") or {}
        algorithm, digest = str(checksum.get("type", "")).lower(), checksum.get("value")
        files.append(RemoteFile(
            entry["name"], entry.get("downloadUri") or entry["url"], entry.get("size"),
            f"{algorithm}:{digest}" if algorithm and digest else None,
        ))
    updated = (item.get("provenance") or {}).get("lastUpdated")
    return Record(source=source, url=url, version=updated, title=item.get("title"), files=tuple(files))


def get_sciencebase_item(
    doi: str, session: requests.Session, api_url: str = Endpoints.sciencebase, doi_url: str = Endpoints.doi
) -> Record:
    """Files of a ScienceBase item given by id, item URL or DOI (``10.5066/...``)."""
    match = SCIENCEBASE_ITEM.search(doi)
    if not match:
        target = resolve_doi(doi, session, doi_url)
        match = SCIENCEBASE_ITEM.search(target)
        if not match:
            raise RepositoryError(doi, f"the DOI resolves to {target}, not a ScienceBase item")
    url = f"{api_url}/item/{match.group(1)}"
    return read_sciencebase_item(get_json(session, url, params={"format": "json"}), url, doi)


# --- GitHub -------------------------------------------------------------------------

@dataclass(frozen=True)
class GitHubLocation:
    """A place in a GitHub repository: ``ref`` None means the default branch, ``path``
    "" the whole repository; ``is_file`` when the URL names one file."""

    owner: str
    repo: str
    ref: str | None
    path: str
    is_file: bool


def github_location(url: str) -> GitHubLocation:
    """Parse a repository, ``tree``, ``blob`` or ``raw.githubusercontent.com`` URL.

    A ref is taken as one path segment (branch names with ``/`` need the raw form
    ``refs/heads/<branch>``).
    """
    parts = urlsplit(url.strip())
    segs = [unquote(s) for s in parts.path.split("/") if s]
    if parts.netloc == "raw.githubusercontent.com" and len(segs) >= 4:
        owner, repo, rest = segs[0], segs[1], segs[2:]
        n_ref = 3 if rest[0] == "refs" and len(rest) > 3 else 1
        ref = "/".join(rest[:n_ref]).removeprefix("refs/heads/").removeprefix("refs/tags/")
        return GitHubLocation(owner, repo, ref, "/".join(rest[n_ref:]), True)
    if parts.netloc in ("github.com", "www.github.com") and len(segs) >= 2:
        owner, repo = segs[0], segs[1].removesuffix(".git")
        if len(segs) == 2:
            return GitHubLocation(owner, repo, None, "", False)
        if segs[2] in ("tree", "blob") and len(segs) >= 4:
            return GitHubLocation(owner, repo, segs[3], "/".join(segs[4:]), segs[2] == "blob")
    raise ValueError(f"{url!r} is not a GitHub repository, tree, blob or raw file URL")


def read_github_tree(
    tree: dict, location: GitHubLocation, commit: str, raw_url: str, api_url: str, source: str = ""
) -> Record:
    """The files of a git tree listing (``/git/trees/<sha>?recursive=1``) under ``location``.

    Names are relative to the location's folder (a file keeps its base name); symbolic
    links and submodules are left out.
    """
    loc = location
    prefix = f"{loc.path}/" if loc.path else ""
    files = []
    for entry in tree.get("tree") or []:
        path = entry["path"]
        if entry.get("type") != "blob" or entry.get("mode") == "120000":
            continue
        if path == loc.path:
            name = path.rsplit("/", 1)[-1]
        elif not loc.is_file and path.startswith(prefix):
            name = path[len(prefix):]
        else:
            continue
        url = f"{raw_url}/{loc.owner}/{loc.repo}/{commit}/{quote(path)}"
        files.append(RemoteFile(name, url, entry.get("size"), f"git-sha1:{entry['sha']}"))
    return Record(
        source=source, url=f"{api_url}/repos/{loc.owner}/{loc.repo}/git/trees/{commit}",
        version=commit, title=f"{loc.owner}/{loc.repo}", files=tuple(files), named_files=loc.is_file,
    )


def get_github_files(
    url: str, session: requests.Session, api_url: str = Endpoints.github_api, raw_url: str = Endpoints.github_raw
) -> Record:
    """Files under a GitHub URL, pinned to the commit its branch points to now.

    Raises
    ------
    RepositoryError
        When the tree is too large to list at once or the path is not in it.
    """
    loc = github_location(url)
    repo_api = f"{api_url}/repos/{loc.owner}/{loc.repo}"
    ref = loc.ref or get_json(session, repo_api)["default_branch"]
    commit = get_json(session, f"{repo_api}/commits/{quote(ref, safe='')}")["sha"]
    tree = get_json(session, f"{repo_api}/git/trees/{commit}", params={"recursive": "1"})
    if tree.get("truncated"):
        raise RepositoryError(url, "the repository tree is too large for one listing; point the URL at a folder")
    record = read_github_tree(tree, loc, commit, raw_url, api_url, url)
    if not record.files:
        raise RepositoryError(url, f"no file at {loc.path or '/'} in commit {commit}")
    return record


# --- plain URL ----------------------------------------------------------------------

def get_url_file(url: str) -> Record:
    """A single file at a URL (no request: its name is the URL's last path segment)."""
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name:
        raise ValueError(f"{url!r} does not end in a file name")
    return Record(source=url, url=url, version=None, title=None, files=(RemoteFile(name, url),), named_files=True)


def distinct_names(files: tuple[RemoteFile, ...] | list[RemoteFile]) -> list[RemoteFile]:
    """The files of a record under names that tell them apart, in record order.

    Figshare and ScienceBase let one record hold different files with the same name.
    Each such file keeps its name inside a folder named by the repository's file id (or
    ``file<k>``, its place among the namesakes), so all of them are downloaded, cached
    and read; a namesake with the same checksum and size is the same file, listed once.
    """
    namesakes: dict[str, list[RemoteFile]] = {}
    for f in files:
        group = namesakes.setdefault(f.name, [])
        if not any(f.checksum and (f.checksum, f.size_bytes) == (g.checksum, g.size_bytes) for g in group):
            group.append(f)
    out = []
    for f in files:
        group = namesakes[f.name]
        if len(group) == 1:
            out += [f] if f is group[0] else []
        elif any(f is g for g in group):
            k = next(i for i, g in enumerate(group, start=1) if g is f)
            out.append(RemoteFile(f"{f.file_id or f'file{k}'}/{f.name}", f.url, f.size_bytes, f.checksum, f.file_id))
    return out


DOI_PREFIXES = {"10.5281/zenodo.": "zenodo", "10.6084/m9.figshare.": "figshare", "10.5066/": "sciencebase"}
"""DOI prefixes of the repositories' own DOIs (Zenodo, Figshare, USGS/ScienceBase)."""


def repository_of(repo: str, source: str) -> str:
    """The client for a manifest entry: the repository its DOI belongs to, else ``repo``.

    A DOI says where the data are (upstream resolved every DOI this way, with
    datahugger), so it wins over a ``repo`` that names another service; URLs go by ``repo``.
    """
    bare = _bare_doi(source).lower()
    return next((name for prefix, name in DOI_PREFIXES.items() if bare.startswith(prefix)), repo)


def get_record(repo: str, source: str, session: requests.Session, endpoints: Endpoints = Endpoints()) -> Record:
    """The :class:`Record` of a manifest entry's ``repo`` and ``doi`` (see :func:`repository_of`).

    Raises
    ------
    RepositoryError
        When the service cannot be reached or answers with an error.
    ValueError
        When ``source`` is not an identifier the repository's client understands.
    """
    repo = repository_of(repo, source)
    if repo == "zenodo":
        return get_zenodo_record(source, session, endpoints.zenodo)
    if repo == "figshare":
        return get_figshare_article(source, session, endpoints.figshare)
    if repo == "sciencebase":
        return get_sciencebase_item(source, session, endpoints.sciencebase, endpoints.doi)
    if repo == "github":
        return get_github_files(source, session, endpoints.github_api, endpoints.github_raw)
    if repo in ("url", "direct_download"):
        return get_url_file(source)
    raise ValueError(f"no download client for repo {repo!r}")
