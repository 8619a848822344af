"""The web service's words, Chinese first: templates write the Chinese (``T("审核")``) and this
catalogue gives the English shown when ``report.language`` is en. One place for every word an
officer or a patrol member reads on a page; refusals carry their Chinese line on the error
(``PatrolError(..., zh=…)``)."""
from __future__ import annotations

ROLE_LABELS = {"patrol": "巡查员", "officer": "执法人员", "admin": "管理员"}
FLIGHT_STATUS = {"uploaded": "待处理", "processing": "处理中", "done": "已完成", "failed": "失败",
                 "queued": "排队中", "running": "正在处理"}      # the last two: the service's own queue
MODEL_STATES = {"candidate": "候选", "active": "当前使用", "retired": "已替换"}
MODEL_ACTIONS = {"registered": "登记", "compared": "评测", "promoted": "启用模型", "refused": "拒绝启用",
                 "rolled_back": "回退"}

EN: dict[str, str] = {
    # header and shared
    "航线": "Flights", "上传": "Upload", "审核": "Review", "任务": "Tasks", "统计": "Stats", "上报": "Report",
    "用户": "Users", "退出": "Sign out", "返回": "Back", "首页": "Home",
    "巡查员": "patrol", "执法人员": "officer", "管理员": "admin",
    "待处理": "uploaded", "处理中": "processing", "已完成": "done", "失败": "failed",
    "排队中": "queued", "正在处理": "running", "技术信息": "Details",
    # login
    "用户名或密码错误": "Wrong user name or password", "用户名": "User name", "密码": "Password", "登录": "Sign in",
    # review
    "地图": "Map", "列表": "List", "全部状态": "All statuses", "件案件": "cases", "下载": "Download",
    "搜索（案件、权利人、村…）": "Search (case, owner, village…)", "案件": "Case", "状态": "Status",
    "类别": "Category", "变化": "Change", "新建/存量 · 变化可信度": "New/existing · change confidence",
    "乡镇/村": "Town/Village", "权利人": "Owner", "优先级": "Priority", "发现": "Seen",
    # case page
    "← 审核": "← Review", "证据单": "Evidence sheet", "案件信息": "Facts", "规则依据": "Why",
    "前后时相": "Before / after", "暂无影像": "No image of this place", "高度对比": "Heights", "高度": "Height",
    "最高": "top", "颜色：深蓝 0 m → 黄 15 m（距地面高度，来自航飞 DSM）":
        "Colour: dark blue 0 m to yellow 15 m above the ground (the flight's DSM)", "现场照片": "On-site photos",
    "尚无现场照片": "No photo yet", "拍照 / 选择文件": "Photo or video", "说明": "Note", "上传照片": "Upload",
    "当事人与建筑": "Party & building", "当事人": "Party", "电话": "Phone", "身份证号": "ID number", "地址": "Address",
    "层数": "Floors", "建筑面积 m²": "Floor area m²", "责任单位": "Unit", "备注": "Remark", "保存": "Save",
    "分派": "Assign", "责任人": "Officer", "未分派": "unassigned", "打印文书": "Documents",
    "新编号（再次出具同类文书）": "New number (another document of the kind)", "尚未出具文书": "No document yet",
    "处置": "Action", "说明（必填）": "Note (required)", "决定书编号": "Order no.", "整改期限": "Deadline",
    "拆除面积 m²（实测）": "Demolished area m² (measured)", "处置记录": "History", "时间": "When", "人员": "Who",
    "原状态": "From", "新状态": "To", "距案件": "from the case", "超出范围": "too far", "无位置": "no position",
    "时间未知": "time unknown", "打印": "Print",
    # model registry (admins)
    "识别模型": "Detector models", "当前模型": "Active model", "配置的默认模型": "the configured default",
    "回退到上一个模型": "Roll back to the previous model", "版本": "Version", "来源模型": "Parent",
    "训练数据": "Training data", "评测（当前 → 候选）": "Evaluation (active → candidate)", "确认": "confirmed",
    "误报": "false positives", "轮": "epochs", "召回": "recall", "精度": "precision", "通过": "passes",
    "未通过": "refused", "评测": "Compare", "启用此模型": "Promote", "启用模型": "promoted", "记录": "History", "操作": "Action",
    "候选": "candidate", "当前使用": "active", "已替换": "retired", "登记": "registered", "拒绝启用": "refused",
    "回退": "rolled back", "超出模型适用分辨率，强制处理": "Outside the model's GSD range, forced",
    # actions (the officer's verbs)
    "确认违法": "Confirm", "制止": "Stop work", "立案": "File", "责令整改/拆除": "Order", "已拆除": "Demolished",
    "已整改": "Rectified", "已复查": "Rechecked", "销号": "Close", "合法（撤销）": "Dismiss: lawful",
    "举报不实（撤销）": "Dismiss: unfounded", "误报（撤销）": "Dismiss: false positive", "重新核查": "Reopen",
    # flights and upload
    "拍摄时间": "Captured", "巡查队": "Team", "文件": "File", "分辨率 m": "GSD m", "处理时间": "Processed",
    "模型": "Model", "待夜间处理": "queued for the nightly run", "暂无航线": "No flights yet",
    "立即处理": "Process now", "重新处理": "Reprocess", "上传航线": "Upload a flight", "查看航线状态": "Flight status",
    # report
    "地面巡查上报": "Ground report", "纬度": "Latitude", "经度": "Longitude", "定位": "Locate me",
    "建筑类型": "Kind", "估计面积 m²": "Size m²", "发现情况（必填）": "What you found (required)",
    "已上报：案件": "Reported: case", "（与已有案件为同一处，已记入其处置记录）":
        " (the same place as a case already open; added to its history)",
    # tasks
    "待办": "My queue", "附近优先": "Near me", "期限": "Deadline", "距离": "Distance", "导航": "Navigate",
    "没有待办的在办案件": "Nothing to do", "今日提醒": "Today's digest", "逾期未办": "Overdue",
    "即将到期": "Due soon", "新发现疑似": "New suspected", "天数": "Days", "执法人员名单": "Officers",
    "账号": "Account", "姓名": "Name", "负责乡镇/村": "Towns/villages", "在办": "Open", "逾期": "Overdue",
    "待分派": "Unassigned", "分派给": "Assign to", "全区": "whole district",
    "所有在办案件均已分派": "Every open case has an officer", "我的": "mine", "天": "days",
    "今日到期": "due today", "剩": "left:", "高德": "Amap", "百度": "Baidu", "拆除/整改": "Demolished/rectified",
    # stats
    "自": "From", "至": "To", "统计期": "Period", "指标": "Figure", "本期": "This period",
    "累计": "Cumulative", "本期处置": "This period", "按月份（事项发生日期）": "By month (of the event)",
    "本期无记录": "Nothing in this period", "下载 xlsx": "Download xlsx",
    "本期无任何记录（无航飞、无新发现、无处置事项）。": "Nothing happened in this period.",
    # users
    "角色": "Role", "启用": "Enable", "解锁": "Unlock", "新增": "Add", "停用": "Disable", "已停用": "disabled",
    "已锁定": "locked", "是": "yes", "密码（至少 8 位）": "Password (≥ 8)",
    "负责乡镇/村（执法人员，逗号分隔）": "Towns/villages (officers), comma separated",
    "正射影像 GeoTIFF，或正射影像、分幅成果、无人机原始照片的 zip 压缩包":
        "Orthophoto GeoTIFF, or a zip of an orthophoto, a split export or the drone photos of one flight",
    "大文件分块续传。": "Large files upload in resumable chunks.",
    "— 请选择 —": "— choose —",
    "带 DSM（数字表面模型，及 DTM）的建模成果请与正射影像一起压缩上传：可剔除平地误检、补漏并发现加层。":
        "A reconstruction with a DSM (and DTM): zip it with the orthophoto — flat false boxes go, "
        "missed structures are found and added storeys flagged.",
}


def translate(zh: str, lang: str) -> str:
    """The word for an officer's screen: the Chinese, or its English when ``lang`` is en."""
    return EN.get(zh, zh) if lang == "en" else zh
