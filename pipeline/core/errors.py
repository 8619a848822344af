"""The one exception family. Every message is one line: what, which file, what to do."""


class PatrolError(Exception):
    """Base of every error a user may see; the CLI prints it as one line. ``zh`` is the same
    line in Chinese, which the web service shows an officer (report.language: zh)."""

    #: the Chinese line of a subclass's errors that bring none of their own
    default_zh: str | None = None

    def __init__(self, *args, zh: str | None = None):
        super().__init__(*args)
        self.zh = zh or self.default_zh


class ConfigError(PatrolError):
    """A setting is missing, malformed or out of range."""
    default_zh = "系统配置有误，请管理员检查配置"


class InputError(PatrolError):
    """An input file (raster, vector, photo, archive) is unusable."""


class StoreError(PatrolError):
    """The store cannot be opened, migrated or written."""
    default_zh = "数据库无法打开或写入，请联系管理员"


class ModelError(PatrolError):
    """The detector weights are missing or unusable."""
    default_zh = "识别模型无法使用，请管理员检查模型文件与配置"


class TransitionError(PatrolError):
    """A case status change that the lifecycle table does not allow."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An error's message as one line (whitespace collapsed, the type's name when it is empty),
    cut to ``limit`` characters."""
    text = " ".join(str(error).split()) or (type(error).__name__ if isinstance(error, BaseException) else "")
    return text[:limit] if limit else text


def error_line(error: BaseException | str) -> str:
    """One line for a log or a failed flight: a PatrolError's message as is, any other error
    prefixed with its type (``OSError: …``)."""
    text = one_line(error)
    if isinstance(error, BaseException) and not isinstance(error, PatrolError):
        return f"{type(error).__name__}: {text}"
    return text
