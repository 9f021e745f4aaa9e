"""Word pools for the synthetic area generator (合成数据词库).

Everything here is fictional: place names are built from syllable pools so that no real
village is named, person names from common surnames and given-name characters. The pools
are plain tuples so that the generator can draw from them with numpy and stay deterministic.
"""

from __future__ import annotations

import numpy as np

# The hundred or so most common surnames, roughly in order of frequency; the generator
# weights them by a Zipf-like law so that 王/李/张 dominate as they do in real registers.
SURNAMES: tuple[str, ...] = tuple(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛"
    "郝龚邵万钱严戴莫孔向汤应俞胡虞竺舒柴楼裘"
)

# Given-name characters. Federation cadres and most heads of must-visit families (left-behind
# women, widowed elderly) are women, so the female pool is drawn more often.
GIVEN_FEMALE: tuple[str, ...] = tuple(
    "丽芳敏静秀英华慧娟霞萍燕玲红梅琳雪婷倩洁颖佳怡瑶月兰凤琴云莉艳桂珍美淑惠巧素玉爱彩"
    "春菊雅晓蓉娜萱馨欣悦薇丹宁杏菲"
)
GIVEN_MALE: tuple[str, ...] = tuple(
    "伟强军勇杰涛明超刚平辉鹏华飞斌波宇浩凯健俊帆帅旭宁龙林国建海志兴良发成德荣福生祥贵"
    "根松"
)
# Characters typical of people born 1935–1955 (the elderly living alone).
GIVEN_ELDERLY: tuple[str, ...] = tuple("桂秀凤英兰珍娣菊翠金银彩阿根福宝杏妹芝招")

# Syllables for fictional place names. Distinct pools per level keep names from repeating
# the same feel at every level.
PLACE_A: tuple[str, ...] = tuple("甬江东西南北湖山溪塘桥河浦岙堰港湾澄明鄞奉慈余象海")
PLACE_B: tuple[str, ...] = tuple(
    "东西南北中新安丰和兴福宁康泰华阳乐平清云龙凤春秋桂兰梅竹松柏石泉林峰岭田沙堤"
    "亭庄家园城镇埠门湾口头塘浦港河溪湖"
)
VILLAGE_A: tuple[str, ...] = tuple(
    "万千百金银花柳桃李杏梅竹松枫樟桑茶稻麦禾丰盛和顺安宁永长高大小上下前后里外"
    "东西南北新老古青白红黄石岩"
)
VILLAGE_B: tuple[str, ...] = tuple(
    "堤桥塘湾溪浦岙埠庄园坊家山岭林田湖港河泉井亭门墩畈垟洋岸洲渡"
)
ROAD_NAMES: tuple[str, ...] = ("中山路", "解放路", "人民路", "兴宁路", "百丈路", "天童路",
                               "湖滨路", "江东路", "和义路", "育才路", "学士路", "沧海路")

DISTRICT_SUFFIX = ("区", "区", "区", "县", "市")  # county-level cities (县级市) exist too
CITY_NAME = "甬江市"
CITY_ID = "C01"
# First six digits of the resident ID number: the real 3302xx prefixes of Ningbo's
# districts, used per synthetic district so that the numbers look like local ones.
AREA_CODES: tuple[str, ...] = ("330203", "330205", "330206", "330211", "330212",
                               "330213", "330225", "330226", "330281", "330282",
                               "330283", "330204")

MOBILE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150", "151",
    "152", "153", "155", "156", "157", "158", "159", "166", "173", "177", "180", "181",
    "182", "183", "185", "186", "187", "188", "189", "191", "198", "199",
)
LANDLINE_AREA = "0574"

# Texts of the family archive (家庭档案) per must-visit category.
BASIC_SITUATION: dict[str, tuple[str, ...]] = {
    "empty_nest": ("老两口同住，子女均在外地工作", "老两口同住，子女在市区，每月回来一次",
                   "老伴身体不好，由老人一人照顾", "高龄老夫妻，行动不便，靠邻居照看"),
    "left_behind": ("丈夫长期在外务工，妻子在家照顾两个孩子", "留守妇女，带孩子和公婆同住",
                    "孩子由母亲一人照顾，父亲在外地打工"),
    "hardship": ("低保家庭，家中有重病患者", "因病致贫，主要劳动力丧失劳动能力",
                 "单亲母亲，收入微薄，孩子在读初中", "残疾人家庭，靠低保和临时救助生活"),
    "dispute": ("夫妻关系紧张，近期多次争吵", "婆媳矛盾较深，家庭气氛紧张",
                "夫妻分居，孩子抚养问题存在分歧"),
    "entrepreneur": ("经营一家小型服装厂，订单下滑", "开设农家乐，客源减少资金周转困难",
                     "电商创业，缺少流动资金和销售渠道"),
    "": ("家庭和睦，无特殊困难", "三口之家，夫妻均有稳定工作", "家庭情况良好"),
}
DIFFICULTIES: dict[str, tuple[str, ...]] = {
    "empty_nest": ("日常照料缺人手", "就医不便", "用电用气安全有隐患", "精神孤独，缺少陪伴"),
    "left_behind": ("孩子课后无人辅导", "缺少就业技能", "家务和农活负担重"),
    "hardship": ("医疗费用负担重", "孩子学费有缺口", "住房条件差"),
    "dispute": ("夫妻沟通不畅", "对离婚财产分割有争议", "家庭成员之间缺乏信任"),
    "entrepreneur": ("资金周转困难", "缺少市场信息", "用工难"),
    "": ("",),
}
MEASURES: dict[str, tuple[str, ...]] = {
    "empty_nest": ("联系贴心女儿爱心食堂送餐", "安排志愿者每周上门", "接入独居老人用电监测"),
    "left_behind": ("对接家庭教育指导讲座", "推荐参加妇女技能培训", "纳入巾帼志愿结对帮扶"),
    "hardship": ("申请康乃馨救助金", "协助申请临时救助", "对接妇女儿童关爱基金"),
    "dispute": ("转介木兰调解室调解", "邀请婚姻家庭咨询师疏导", "网格员定期回访"),
    "entrepreneur": ("对接创业互助帮帮团", "推荐妇女创业贴息贷款", "牵线供应链对接会"),
    "": ("",),
}

# Visit findings (家情 / 企情 / 妇情).
FAMILY_SITUATION = ("家庭成员身体状况稳定", "老人近期血压偏高，已提醒按时服药", "孩子学习情况良好",
                    "家中卫生条件一般", "夫妻关系有所缓和", "子女近期回家探望过")
BUSINESS_SITUATION = ("经营状况平稳", "订单较上月减少", "资金压力较大", "已对接新的销售渠道",
                      "计划扩大生产规模")
WOMEN_SITUATION = ("情绪稳定", "希望参加技能培训", "照顾家庭压力较大", "身体状况一般，需定期体检",
                   "有意向外出就业")
VISIT_DIFFICULTIES = ("行动不便，买菜困难", "孩子作业辅导困难", "医药费报销流程不熟悉",
                      "找工作没有门路", "家中电器老化", "与家人沟通困难")
VISIT_MEASURES = ("已联系志愿者定期上门", "已转介相关部门", "现场讲解政策", "留下联系方式，随时联系",
                  "纳入下月重点回访", "已协调社区帮助解决")
NEUTRAL_NOTES = ("老人精神状态良好", "已留联系电话", "邻居反映情况正常", "家属在场", "下次带宣传资料")
# Dispute and safety cues that the escalation step looks for (家暴, 离婚, 赌博, 吵架, 轻生).
CUE_NOTES = ("邻居反映夫妻近期经常吵架，女方情绪低落", "女方提到丈夫酒后有家暴行为，需尽快介入",
             "夫妻正在商量离婚，孩子抚养问题有争议", "家属反映丈夫沉迷赌博，家庭负债",
             "老人言语中流露轻生念头，需重点关注")

# Resource pool (服务资源池): provider type → (name patterns, offered demand categories).
RESOURCE_KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model_post", "{v}巾帼文明岗（卫生服务站）", ("elderly_care", "domestic_services")),
    ("model_post", "{v}巾帼文明岗（便民服务中心）", ("employment_rights", "democratic_participation")),
    ("best_family", "{p}家（最美家庭）", ("family_education", "marriage_family_rights")),
    ("red_banner", "三八红旗手{p}", ("entrepreneurship", "skills")),
    ("micro_home", "{v}妇女微家", ("family_education", "elderly_care", "skills")),
    ("volunteer_team", "{v}巾帼志愿服务队", ("elderly_care", "domestic_services")),
    ("expert", "心理咨询师{p}", ("marriage_family_rights", "family_education")),
    ("expert", "律师{p}", ("marriage_family_rights", "employment_rights")),
    ("expert", "税务师{p}", ("entrepreneurship",)),
    ("expert", "家庭教育指导师{p}", ("family_education",)),
    ("expert", "面点师傅{p}", ("skills", "employment_rights")),
)


def zipf_weights(n: int, exponent: float = 0.9) -> np.ndarray:
    """Probability weights that fall off like real surname frequencies."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()
