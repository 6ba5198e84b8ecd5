"""Chinese terminal UI: the flows' English screens translated at the display.

Pure functions over values, any thread, never raise for text. `translate(screen)` maps
each fixed text the flows and the app show (sale.py, shell.py, app_card.py, app_menu.py,
qrpay.py, the txnkinds labels, the response-code messages) through an exact-phrase table,
and the templated ones ("SALE CNY 12.50", "Wrong PIN: 2 left", "TXNS 1-4/5") through
regex patterns; numbers, amounts, STANs and masked PANs pass through unchanged and
unknown text stays as it is. A message the flow word-wrapped over several lines is
rejoined and translated as one phrase when the table knows it (the limit texts with an
amount, "Over CHIP limit 500.00", keep the amount on a line of its own). Every line of
the result is at most 20 display columns (a CJK character takes 2,
firmware.receipts.text_width), so at most 20 characters: a valid Screen; a longer one is
cut with fit().
Terms follow Chinese bank POS terminals (UnionPay): 消费, 撤销, 退货, 预授权, 签到, 结算.
"""
from __future__ import annotations

import re

from firmware.acquirer.codes import RESPONSE_CODES
from firmware.flows.types import LCD_COLS, Screen, fit
from firmware.hal.printer import COVER_OPEN, OFFLINE, PAPER_OUT
from firmware.receipts import text_width
from firmware.txnkinds import KINDS

__all__ = ["translate", "translate_text", "PHRASES"]

# Kind labels first: "SALE" -> 消费 ...
_KIND_ZH = {kind.label: kind.label_zh for kind in KINDS.values()}

PHRASES: dict[str, str] = {
    **{en: zh for en, zh in reversed(RESPONSE_CODES.values())},  # the first zh of an en wins
    **_KIND_ZH,
    # idle, amount, card
    "KPOS": "KPOS", "TRAINING": "培训模式", "Key in amount": "请输入金额", "Amount": "金额",
    "ENTER to confirm": "按确认键继续", "Insert or swipe card": "请插卡或刷卡",
    "Insert, tap or swipe": "请插卡/挥卡/刷卡", "Card no.": "卡号", "Expiry MMYY": "有效期(月年)",
    "Select app": "选择应用", "Reading card": "正在读卡", "Do not remove": "请勿拔卡",
    "Enter PIN": "请输入密码", "Checking PIN": "正在验证密码", "Please wait": "请稍候",
    "Processing": "正在处理", "PIN blocked": "密码已锁", "Remove card": "请取卡",
    "Please take card": "请取走卡片", "Swipe again": "请重新刷卡", "Key in card": "手输卡号",
    "Chip card": "芯片卡", "Please insert card": "请插卡", "Insert card": "请插卡",
    "Swipe card": "请刷卡", "Invalid card no.": "卡号无效", "Invalid expiry": "有效期无效",
    "Card read error": "读卡失败", "Offline PIN failed": "脱机密码验证失败",
    # results
    "APPROVED": "交易成功", "DECLINED": "交易失败", "NO RESPONSE": "无应答",
    "NOT SENT": "未发送", "ERROR": "错误", "Reversal pending": "待冲正",
    "Host unreachable": "主机无法连接", "Unknown outcome": "结果未知",
    "Check journal": "请查流水", "Approved offline": "脱机批准", "Available": "可用余额",
    "No balance given": "未返回余额", "Declined by card": "卡片拒绝",
    "Declined offline": "脱机拒绝", "Sign-on failed": "签到失败",
    "Card does not match original": "与原交易卡号不符", "Advice queued": "通知已排队",
    "Card declined, reversed": "卡片拒绝,已冲正", "Card removed, reversed": "卡已拔出,已冲正",
    "Paid late: refunded": "超时支付:已退款", "No QR code offline": "脱机不能扫码",
    "Unknown QR code": "无效付款码", "No answer from wallet": "钱包无应答",
    "NOT PAID": "未支付", "Printing...": "正在打印...", "No receipt": "不打印签购单",
    "Take receipts": "请取签购单", "Take receipt": "请取签购单", "Receipt queued": "签购单待打印",
    "Sign merchant copy": "请在商户联签名", "Risk rules": "风控规则", "Risk rule": "风控规则",
    # stops
    "Cancelled": "已取消", "Sale not done": "交易未完成", "Timed out": "超时",
    "No card presented": "未见卡片", "No card keyed in": "未输入卡号",
    "No supervisor": "主管未确认", "No app selected": "未选择应用", "PIN timeout": "密码输入超时",
    "Card removed": "卡已拔出", "Wrong card": "卡片不符", "Not the card of the original":
    "与原交易卡片不符", "Refused": "已拒绝", "Not confirmed": "未确认", "Not allowed": "无权限",
    "Card not paid": "刷卡未支付",
    # login
    "LOGIN": "签到登录", "SUPERVISOR": "主管确认", "Password": "密码", "Checking": "正在验证",
    "Login failed": "登录失败", "Unknown role": "未知角色", "Wrong password": "密码错误",
    "No such operator": "无此操作员", "Operator no.": "操作员号", "Supervisor no.": "主管号",
    "Supervisor only": "需主管权限", "Admin only": "需管理员权限", "Cashier only": "需收银员权限",
    # menus
    "MENU": "菜单", "TRANSACTIONS": "交易查询", "MANAGER": "管理", "Sale": "消费",
    "Void": "撤销", "Refund": "退货", "Balance": "查询余额", "Pre-auth": "预授权",
    "QR pay": "扫码支付", "Repayment": "信用卡还款", "Transactions": "交易查询",
    "Manager": "管理", "Basket": "购物车", "Cash": "现金", "Cancel": "撤销",
    "Completion": "预授权完成", "Completion advice": "预授权完成通知",
    "Completion void": "预授权完成撤销", "Last txns": "最近交易", "Find by STAN": "按流水号查",
    "Find by RRN": "按参考号查", "Reprint last": "重打上一笔", "Reprint by STAN": "按流水号重打",
    "Echo test": "回响测试", "Settlement": "结算", "X report": "X报表", "Sign-on": "签到",
    "Sign off": "签退", "Terminal info": "终端信息", "No sale": "开钱箱", "Training mode": "培训模式",
    "FIND": "查询", "REPRINT": "重打印", "X REPORT": "X报表", "ECHO TEST": "回响测试",
    "SETTLEMENT": "结算", "SIGN-ON": "签到", "TERMINAL": "终端信息",
    "COMPLETION ADVICE": "预授权完成通知", "DISCOUNT": "折扣", "NO SALE": "开钱箱",
    "TRAINING MODE": "培训模式", "Drawer open": "钱箱已打开",
    # forms, lookups
    "STAN": "流水号", "RRN": "参考号", "Original date MMDD": "原交易日期(月日)",
    "Auth code": "授权码", "Card to pay": "还款卡号", "or swipe the card": "或刷卡",
    "Payment code": "付款码", "Scan payment code": "请扫付款码", "Invalid code": "付款码无效",
    "Invalid date": "日期无效", "Waiting for payment": "等待支付", "Waiting for customer":
    "等待顾客确认", "Searching": "正在查询", "No transactions": "无交易", "Not found": "未找到",
    "Not found in this batch": "本批次未找到", "Already voided": "已撤销",
    "Nothing left to refund": "无可退金额", "Cannot void": "不能撤销", "Settle batch?": "结算本批次?",
    "ENTER to settle": "按确认键结算", "ENTER to void": "按确认键撤销", "VOIDED": "已撤销",
    "Cancel pending": "待撤单",
    # menu tasks
    "Reprint": "重打印", "Nothing to reprint": "无可重打", "Printed": "已打印",
    "Report printed": "报表已打印", "Error": "错误", "Signed on": "签到成功",
    "New working keys": "工作密钥已更新", "Sign-on refused": "签到被拒", "Terminal": "终端信息",
    "Not signed on": "未签到", "Not settled": "未结算", "Settled": "结算完成",
    # basket, cash, training
    "BASKET": "购物车", "BASKET OPTIONS": "购物车选项", "1 Quantity 2 Remove": "1 数量  2 删除",
    "3 Discount amount": "3 折扣金额", "4 Discount percent": "4 折扣比例", "5 Pay": "5 付款",
    "Clear basket?": "清空购物车?", "ENTER to clear": "按确认键清空", "CANCEL to keep": "按取消键保留",
    "No items": "无商品", "Key code or scan": "输入或扫描条码", "No product catalog": "无商品目录",
    "Unknown product": "未知商品", "Basket is empty": "购物车为空", "Nothing to pay": "无需付款",
    "Saving...": "正在保存...", "Basket not kept": "购物车未保存", "Basket not saved": "购物车未保存",
    "PAY": "付款", "STILL DUE": "尚欠", "1 Card  2 QR": "1 刷卡  2 扫码",
    "3 Cash  4 Cash+card": "3 现金  4 现金+刷卡", "Over QR limit": "超出扫码限额",
    "Too small to split": "金额太小不能拆分", "CASH PAID": "现金已收", "Journal error": "流水错误",
    "Not recorded": "未记录", "Quantity": "数量", "Remove line no.": "删除行号",
    "Discount amount": "折扣金额", "Discount percent": "折扣比例", "Cash part": "现金部分",
    "Tendered": "实收金额", "Key the cash part": "请输入现金部分", "Not enough": "金额不足",
    "Training ON": "培训模式 开", "Training OFF": "培训模式 关",
    "Training host failed": "培训主机故障", "Terminal busy, try again": "终端忙,请重试",
    # device faults and card read reasons (CardReadError.reason, SwipeFailed.reason)
    PAPER_OUT: "缺纸", OFFLINE: "脱机", COVER_OPEN: "纸仓盖未关", "error": "故障",
    "card removed or reader error": "卡已拔出或读卡错",
    "no supported application": "无支持的应用", "application blocked": "应用已锁定",
    "card declined (AAC)": "卡片拒绝", "card gave no cryptogram": "卡片无密文",
    "Over contactless limit": "超出非接限额", "PAN fails the Luhn check": "卡号校验错误",
    "track 2 does not match the PAN": "二磁道与卡号不符", "offline tap not supported": "不支持脱机挥卡",
    "unreadable stripe": "磁条无法读取", "card expired": "卡已过期",
    # offline refusals (firmware.offline.refusal)
    "Online only": "仅限联机", "No swipe offline": "脱机不能刷卡", "No keying offline": "脱机不能手输",
    "Entry not offline": "此方式不能脱机", "PIN needs the host": "联机密码需主机",
    "Over offline limit": "超出脱机限额", "Offline count full": "脱机笔数已满",
    "Offline total full": "脱机金额已满", "Queued too long": "脱机交易积压过久",
    "Batch full, settle first": "批次已满,请先结算",  # the batch-full rule (app_menu)
    # journal statuses (detail screen)
    "SENDING": "发送中", "FAILED": "失败", "UNKNOWN": "状态未知", "REVERSED": "已冲正",
}

# "Prefix rest": the prefix translated, the rest (an amount, a number, a reason) kept or
# itself looked up.
_PREFIXES = {
    "Amount": "金额", "Auth": "授权码", "Code": "代码", "Max": "最大", "Paid": "实收",
    "Change": "找零", "Total": "合计", "Discount": "折扣", "Subtotal": "小计", "Due": "应付",
    "Debits": "借记", "Credits": "贷记", "Batch": "批次号", "STAN": "流水号", "TID": "终端号",
    "MID": "商户号", "Lines": "行", "Line": "行", "Quantity": "数量", "Host answered": "主机应答",
    "Operator no.": "操作员号", "Supervisor no.": "主管号", "REFUNDED": "已退货",
    "DECLINED": "交易失败",
    "Reader:": "读卡器:", "Printer:": "打印机:", "Card error:": "卡片错误:", "Error:": "错误:",
    "No answer:": "无应答:",
}
_PREFIX = re.compile(r"(%s) (.+)" % "|".join(map(re.escape, sorted(_PREFIXES, key=len, reverse=True))))
_KIND = "|".join(map(re.escape, sorted(_KIND_ZH, key=len, reverse=True)))
_MONEY = r"[A-Z]{3} -?\d+(?:\.\d+)?"
# the entry classes and wallets of firmware.limits (its _LABELS), in the limit texts
_LIMIT_ZH = {"CHIP": "芯片卡", "CONTACTLESS": "非接", "SWIPE": "刷卡", "MANUAL": "手输",
             "QR": "扫码", "WECHAT": "微信", "ALIPAY": "支付宝", "UNIONPAY QR": "银联二维码"}
_LIMIT = "|".join(map(re.escape, sorted(_LIMIT_ZH, key=len, reverse=True)))
_AMOUNT = r"-?\d+(?:\.\d+)?"  # firmware.money.format_amount without the currency
_SPAN = r"\d+ min|[\d.]+ s"  # firmware.limits._span
_WORDS = {"ONLINE": "联机", "OFFLINE": "脱机", "CONNECTING": "连接中",
          "KPOS": "KPOS", "TRAINING": "培训", "APPROVED": "成功", "OK": "成功"}


def _t(text: str) -> str:
    """A phrase's Chinese; one fit() cut ("card removed o...") is matched by its start."""
    if text in PHRASES or not text.endswith("..."):
        return PHRASES.get(text, text)
    return next((zh for en, zh in PHRASES.items() if en.startswith(text[:-3])), text)


def _span_zh(span: str) -> str:
    """"10 min" -> "10分钟", "90 s" -> "90秒"."""
    number, unit = span.split()
    return number + ("分钟" if unit == "min" else "秒")


def _one_line_or_two(head: str, tail: str) -> str:
    """head + tail on one line when they fit it, else on two."""
    return head + tail if text_width(head + tail) <= LCD_COLS else f"{head}\n{tail}"


# (pattern, replacement): the first full match wins. Messages first: these may come
# word-wrapped over several lines; a "\n" in a replacement starts a second line where the
# wrapped English left room for it.
_MESSAGES: tuple[tuple[re.Pattern, object], ...] = tuple((re.compile(p), r) for p, r in (
    (r"Wrong PIN: (\d+) left", lambda m: f"密码错误,剩{m[1]}次"),
    (r"Wrong password \((\d+) left\)", lambda m: f"密码错误,剩{m[1]}次"),
    (r"Locked (\d+) min", lambda m: f"已锁定{m[1]}分钟"),
    (r"Cannot (void|refund) (.+)", lambda m: f"不能{'撤销' if m[1] == 'void' else '退货'} {_t(m[2])}"),
    (r"Cannot (void|refund): (.+)", lambda m: f"不能{'撤销' if m[1] == 'void' else '退货'}:"
                                              f"{_t(m[2].upper())}"),
    (r"malformed .+", "卡片数据错误"),
    (rf"No ((?i:{_KIND})) offline",
     lambda m: _one_line_or_two(_KIND_ZH[m[1].upper()], "不能脱机")),
    (rf"Over ({_LIMIT}) limit ({_AMOUNT})", lambda m: f"超出{_LIMIT_ZH[m[1]]}限额\n{m[2]}"),
    (rf"Over ({_LIMIT}) daily limit ({_AMOUNT})",
     lambda m: f"超出{_LIMIT_ZH[m[1]]}日限额\n{m[2]}"),
    (rf"(\d+) sales in ({_SPAN})", lambda m: f"{_span_zh(m[2])}内{m[1]}笔"),
    (rf"Total ({_AMOUNT}) in ({_SPAN})", lambda m: f"合计 {m[1]}\n{_span_zh(m[2])}内"),
))
_PATTERNS: tuple[tuple[re.Pattern, object], ...] = _MESSAGES + tuple((re.compile(p), r) for p, r in (
    (rf"({_KIND}) ({_MONEY})", lambda m: f"{_KIND_ZH[m[1]]} {m[2]}"),  # SALE CNY 12.50
    (rf"({_KIND}) (APPROVED|OK)", lambda m: f"{_KIND_ZH[m[1]]}成功"),  # VOID APPROVED
    (rf"({_KIND}) (\d{{6}})", lambda m: f"{_KIND_ZH[m[1]]} {m[2]}"),  # VOID 000123
    (r"(\d{6}) (\S.*?) +(-?[\d.]+)", lambda m: f"{m[1]} {_label_prefix(m[2])} {m[3]}"),
    (r"(ONLINE|OFFLINE|CONNECTING)  queued (\d+)", lambda m: f"{_WORDS[m[1]]}  待发{m[2]}笔"),
    (r"(KPOS|TRAINING) +op (.+)", lambda m: f"{_WORDS[m[1]]}  操作员 {m[2]}"),
    (r"! (\d+) alerts?: support", lambda m: f"! {m[1]}条告警:联系维护"),
    (r"(MENU|SALE|PRE-AUTH|TRANSACTIONS|MANAGER) (\d+/\d+)", lambda m: f"{_t(m[1])} {m[2]}"),
    (r"TXNS (\d+-\d+/\d+)", lambda m: f"交易 {m[1]}"),
    (r"BASKET (\d+) items?", lambda m: f"购物车 {m[1]}件"),
    (r"(\d+)-(\d+) digits", lambda m: f"{m[1]}-{m[2]}位"),
    (r"(\d+) digits", lambda m: f"{m[1]}位"),
    (r"in (\d+) ms", lambda m: f"耗时 {m[1]} ms"),
    (r"(\d+) s left", lambda m: f"剩{m[1]}秒"),
    (r"(\S+) OFFLINE", lambda m: f"{_t(m[1])} 脱机"),
    (r"(\d) (.+)", lambda m: f"{m[1]} {PHRASES[m[2]]}" if m[2] in PHRASES else m[0]),  # menu
))


def _label_prefix(text: str) -> str:
    """A kind label the list line cut to fit ("PRE-AUTH CA") -> its Chinese label."""
    text = text.strip()
    kind = next((k for k in KINDS.values() if k.label == text), None) or next(
        (k for k in KINDS.values() if k.label.startswith(text)), None)
    return kind.label_zh if kind else text


def _cut(text: str) -> str:
    """`text` within LCD_COLS display columns, cut with fit()."""
    width = len(text)
    while text_width(fit(text, width)) > LCD_COLS:
        width -= 1
    return fit(text, width)


def translate_text(text: str) -> str:
    """One line (or title) in Chinese: exact phrase, then a pattern, then a known prefix;
    unknown text unchanged. Always within LCD_COLS display columns."""
    return _cut(_translate(text).replace("\n", " "))


def _translate(text: str) -> str:
    if text in PHRASES:
        return PHRASES[text]
    for pattern, replacement in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return replacement(match) if callable(replacement) else replacement
    match = _PREFIX.fullmatch(text)
    if match:
        return f"{_PREFIXES[match[1]]} {_t(match[2])}"
    return text


def _lines(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Lines translated; a run of lines that rejoins into a known phrase or message (one
    the flow word-wrapped) becomes its one line."""
    out, i = [], 0
    while i < len(lines):
        j = next((j for j in range(len(lines), i + 1, -1) if _is_message(" ".join(lines[i:j]))),
                 i + 1)
        out.extend(_rows(_translate(" ".join(lines[i:j])), j - i))
        i = j
    return tuple(out)


def _rows(text: str, room: int) -> list[str]:
    """A translation on its own lines ("\n") when `room` lines allow, else on one; each
    cut to LCD_COLS display columns."""
    parts = text.split("\n")
    return [_cut(part) for part in (parts if len(parts) <= room else [" ".join(parts)])]


def _is_message(text: str) -> bool:
    return text in PHRASES or any(pattern.fullmatch(text) for pattern, _ in _MESSAGES)


def translate(screen: Screen) -> Screen:
    """`screen` in Chinese (title and lines); tone unchanged. Never raises."""
    return Screen(translate_text(screen.title), _lines(screen.lines), screen.tone)
